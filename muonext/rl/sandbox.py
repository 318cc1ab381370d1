"""Code rewards: run a response's program and then its tests in a sandboxed subprocess.

k1.5 rewards code by running it against test cases. The program is untrusted (it was written by the
policy being trained), so it runs in layers of isolation; `CodeResult.layers` names the ones that were
actually in force for that run, because several depend on privileges.

What each layer guarantees (see `_sandbox_child.py` for the mechanics):

* ``isolated_interpreter``: ``python -I -S``: no site-packages, no user site, no ``PYTHON*`` variables,
  the script's directory is not on ``sys.path``. Only the standard library is importable.
* ``clean_env``: the environment is replaced by ``PATH`` and ``LANG``; nothing of the parent's leaks.
* ``temp_cwd``: a fresh temporary directory, deleted afterwards.
* ``rlimits``: CPU seconds, address space (``MemoryError`` past it), file size (also caps stdout and
  stderr, which go to files), open files, no core dumps.
* ``net_namespace`` (root only): a new network namespace with no interfaces up, not even loopback;
  every connect fails with "network unreachable". Without it, ``socket_guard`` replaces
  ``socket.socket`` — best effort only: ``import _socket`` gets around it.
* ``pid_namespace`` (root only): the program is PID 1 of its own namespace; when it dies or is killed
  the kernel kills every process it started, even ones that called ``setsid()``. Without it, the
  process group is killed, which a process that called ``setsid()`` escapes.
* ``read_only_fs`` (root only): in a private mount namespace every mount is read-only and nosuid except
  the work directory. ``private_proc``: ``/proc`` shows only the sandbox's own processes.
* ``uid_drop`` (root only): the program runs as ``nobody`` (65534) with no groups, so files readable
  only by root (``/root``, other processes' ``/proc/*/environ``) are out of reach, and ``nproc``
  (RLIMIT_NPROC, which the kernel does not enforce for root) stops fork bombs. The limit counts every
  process of that uid, so concurrent sandboxes share it. Without root, ``nproc`` is set to the user's
  current process count plus the limit (racy, but it stops a fork bomb).
* ``no_new_privs``: setuid binaries cannot raise privileges.

A pass needs a result message carrying a per-run nonce that only the harness knows, sent after the
last test: ``sys.exit(0)`` or ``os._exit(0)`` before or inside the tests is a failure, not a pass.

The program is PID 1 of its namespace, where the kernel drops signals it sends itself that have no
handler (``os.kill(os.getpid(), SIGTERM)`` does nothing); faults (SIGSEGV, ...) and the SIGKILL of the
deadline still end it, and are reported as "killed by signal N".

Not covered: CPU time of a well-behaved program on a busy machine (the wall clock decides); memory
summed over processes (RLIMIT_AS is per process and there is no cgroup, so a program may use up to
``processes`` × ``memory_bytes``); reading world-readable files (``/etc``, the repository's source);
kernel exploits; and a program that deliberately attacks the harness from inside the interpreter it shares
with the tests (e.g. redefining ``__eq__`` to make every assertion pass). There is no seccomp filter.
Without root (or where namespaces are refused) there is no read-only view and no network namespace:
then files the user can write are writable, and only the socket guard stands in for the network.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

_CHILD = Path(__file__).with_name("_sandbox_child.py")
_TAIL = 4000  # characters of stdout/stderr kept in the result
NOBODY = 65534
TEMP_PREFIX = "muonext-sbx-"


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one run. `processes` is per uid (see the module docstring)."""

    memory_bytes: int = 512 * 2**20
    file_bytes: int = 16 * 2**20
    open_files: int = 64
    processes: int = 32
    # As root: network, PID and mount namespaces. Without them root cannot drop to `nobody` unless the
    # interpreter is world-readable, and the sandbox then refuses to run (reason "sandbox error: ...").
    namespaces: bool = True

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "file_bytes", "open_files", "processes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class CodeResult:
    """Outcome of `run_code_tests`. `reason` is "passed" or why not, in words a log reader can use."""

    passed: bool
    reason: str
    stdout: str = ""
    stderr: str = ""
    layers: tuple[str, ...] = field(default=())


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - _TAIL))
        return f.read().decode("utf-8", errors="replace")


def _traversable(path: Path) -> bool:
    """Whether every directory down to `path` lets others through (o+x): `nobody` can reach it."""
    return all(p.stat().st_mode & 0o001 for p in (path, *path.parents))


def _temp_root() -> str:
    """tempfile's directory if `nobody` can reach it by absolute path (the stdlib mount needs that),
    else /tmp. A private TMPDIR such as pytest's 0700 base would otherwise break imports in the runner."""
    d = tempfile.gettempdir()
    return d if _traversable(Path(d)) else "/tmp"


def _reason(msg: dict | None, returncode: int, limits: SandboxLimits) -> str:
    if msg is None:
        if returncode < 0:
            return f"killed by signal {-returncode}"
        return f"exited before the tests finished, without a result (exit code {returncode})"
    status, detail = msg["status"], msg.get("detail", "")
    if status == "passed":
        return "passed"
    if status == "timeout":
        return "timeout"
    if status == "signal":
        sig = msg["signal"]
        if sig == signal.SIGKILL and msg.get("cpu_s", 0) >= msg.get("cpu_limit_s", 1e9) - 0.5:
            return "timeout (cpu time limit)"
        if sig == signal.SIGXFSZ:
            return "output or file size limit"
        return f"killed by signal {sig}"
    if status == "memory":
        return f"memory limit ({limits.memory_bytes // 2**20} MiB): {detail}"
    if status == "syntax_error":
        return f"syntax error: {detail}"
    if status == "test_failed":
        return f"test failed: {detail}"
    if status == "test_error":
        return f"test error: {detail}"
    if status == "program_error":
        if "File too large" in detail:
            return f"output or file size limit: {detail}"
        return f"program error: {detail}"
    if status == "sandbox_error":
        return f"sandbox error: {detail}"
    if status == "early_exit":
        return f"exited early: {detail}"
    return f"{status}: {detail}"


def run_code_tests(
    code: str, tests: str, timeout_s: float = 5.0, limits: SandboxLimits | None = None
) -> CodeResult:
    """Run `code`, then `tests` (assert statements) in the same namespace, in a sandbox.

    Passes only when the tests ran to their end inside the time and resource limits. Never raises for
    anything the program does; raises ValueError for a bad `timeout_s`.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    limits = limits or SandboxLimits()
    root = os.geteuid() == 0
    outer = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=_temp_root()))
    read_fd = write_fd = -1
    proc = None
    try:
        outer.chmod(0o711)  # `nobody` may traverse to work/ and py/, not list or write
        work, py = outer / "work", outer / "py"
        work.mkdir(mode=0o700)
        py.mkdir(mode=0o755)
        if root:
            os.chown(work, NOBODY, NOBODY)
        nonce = secrets.token_hex(16)
        read_fd, write_fd = os.pipe()
        cfg = {
            "nonce": nonce,
            "result_fd": write_fd,
            "work": str(work),
            "stdlib_mount": str(py),
            "stdlib_world_readable": _traversable(Path(os.path.realpath(sys.base_prefix))),
            "namespaces": limits.namespaces,
            "uid": NOBODY,
            "gid": NOBODY,
            "timeout_s": timeout_s,
            "code": code,
            "tests": tests,
            "limits": {
                "cpu_s": int(timeout_s) + 1,
                "memory_bytes": limits.memory_bytes,
                "file_bytes": limits.file_bytes,
                "open_files": limits.open_files,
                "processes": limits.processes,
            },
        }
        with open(outer / "stdout", "wb") as out, open(outer / "stderr", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_CHILD)],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=outer,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,
                pass_fds=(write_fd,),
                close_fds=True,
            )
        os.close(write_fd)
        write_fd = -1
        assert proc.stdin is not None
        try:
            proc.stdin.write((json.dumps(cfg) + "\n").encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            # The child enforces the deadline itself; this is the backstop if it cannot.
            proc.wait(timeout=timeout_s + 5.0)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(proc.pid)
        proc.wait()
        msg, layers = _read_result(read_fd, nonce)
        if msg is not None and msg["status"] == "signal":
            msg["cpu_limit_s"] = cfg["limits"]["cpu_s"]
        reason = _reason(msg, proc.returncode, limits)
        return CodeResult(
            passed=reason == "passed",
            reason=reason,
            stdout=_tail(outer / "stdout"),
            stderr=_tail(outer / "stderr"),
            layers=layers,
        )
    finally:
        if proc is not None and proc.returncode is None:
            _kill_group(proc.pid)
            proc.wait()
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(outer, onerror=_force_remove)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_result(fd: int, nonce: str) -> tuple[dict | None, tuple[str, ...]]:
    """The last well-formed final message carrying our nonce, with the layers of all of them (the
    runner announces its layers when it starts; a timeout is reported by the supervisor)."""
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    found, layers = None, []
    for line in b"".join(chunks).decode("utf-8", errors="replace").splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("nonce") == nonce and isinstance(msg.get("status"), str):
            layers += [x for x in msg.get("layers", ()) if x not in layers]
            if msg["status"] != "started":
                found = msg
    return found, tuple(layers)


def _force_remove(func, path, exc_info) -> None:
    """rmtree fallback for entries the program made unwritable (e.g. `chmod 000` on a directory)."""
    try:
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            shutil.rmtree(path, onerror=_force_remove)
        else:
            os.unlink(path)
    except OSError:
        pass
