"""Code rewards: run a response's program in a sandboxed subprocess and judge it in this process.

k1.5 rewards code by running it against test cases. The program is untrusted (it was written by the
policy being trained), so it runs in layers of isolation, and it never shares an interpreter with the
code that decides its reward: the child runs the program and reports its outputs as plain data; the
comparison with the expected values happens here (`judge.py`), and the expected values are never sent
to the child. Three kinds of test:

* `run_code_tests(code, tests)`: `assert` statements (and imports); each assertion's program-dependent
  parts run in the child, the comparison here;
* `run_call_tests(code, entry_point, cases)`: `entry_point(*args)` against `expected`;
* `run_stdio_tests(code, cases)`: the program run once per `input` (stdin), its stdout against `output`.

`CodeResult.layers` names the isolation that was in force for the run, since several depend on
privileges. What each layer guarantees (see `_sandbox_child.py` for the mechanics):

* ``isolated_interpreter``: ``python -I -S``: no site-packages, no user site, no ``PYTHON*`` variables,
  the script's directory is not on ``sys.path``. Only the standard library is importable.
* ``clean_env``: the environment is replaced by ``PATH`` and ``LANG``; nothing of the parent's leaks.
* ``temp_cwd``: a fresh temporary directory, deleted afterwards.
* ``rlimits``: CPU seconds, address space (``MemoryError`` past it), file size (also caps stdout and
  stderr, which go to files), open files, no core dumps.
* ``user_namespace``: without root (or as uid 0 without capabilities, as in many containers) the layers
  below are set up inside a new user namespace, as bubblewrap does, where the kernel allows it.
* ``net_namespace``: a new network namespace with no interfaces up, not even loopback; every connect
  fails with "network unreachable". Without it, ``socket_guard`` replaces ``socket.socket`` — best
  effort only: ``import _socket`` gets around it.
* ``pid_namespace``: the program is PID 1 of its own namespace; when it dies or is killed the kernel
  kills every process it started, even ones that called ``setsid()``.
* ``read_only_fs``: in a private mount namespace every mount is read-only and nosuid except the work
  directory. ``private_tmp``: the temporary root shows only this run's work directory, so other
  sandboxes' directories are out of sight. ``private_proc``: ``/proc`` shows only the
  sandbox's own processes.
* ``uid_drop`` (root with capabilities): the program runs as ``nobody`` (65534) with no groups, so files
  readable only by root are out of reach, and ``nproc`` (RLIMIT_NPROC, which the kernel does not enforce
  for root) stops fork bombs. The limit counts every process of that uid, so concurrent sandboxes share
  it. Otherwise ``nproc`` is set to the user's current process count plus the limit (racy, but it stops
  a fork bomb) — except for uid 0 of the host, capless or mapped to another uid in a user namespace,
  which the kernel exempts from RLIMIT_NPROC: there a fork bomb runs until the deadline, inside its PID
  namespace (which the kernel empties when it ends), and can briefly use up the host's process slots.
* ``no_new_privs``: setuid binaries cannot raise privileges.

The program is PID 1 of its namespace, where the kernel drops signals it sends itself that have no
handler (``os.kill(os.getpid(), SIGTERM)`` does nothing); faults (SIGSEGV, ...) and the SIGKILL of the
deadline still end it, and are reported as "killed by signal N".

Not covered: CPU time of a well-behaved program on a busy machine (the wall clock decides); memory
summed over processes (RLIMIT_AS is per process and there is no cgroup, so a program may use up to
``processes`` × ``memory_bytes``); reading world-readable files outside the temporary root (``/etc``,
the repository's source); kernel exploits. There is no seccomp filter. Where neither root nor user
namespaces are available there is no read-only view and no network namespace: then files the user can
write are writable, and only the socket guard stands in for the network.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ._sandbox_child import FORK_RETRY_S, retry_on_eagain
from .judge import UnsupportedTestError, call_checks, call_verdict, split_asserts, stdio_verdict, verdict

_CHILD = Path(__file__).with_name("_sandbox_child.py")
_TAIL = 4000  # characters of stdout/stderr kept in the result
MAX_RESULT_BYTES = 16 * 2**20  # of messages from the child; past it the run is cut short
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


@dataclass(frozen=True)
class _Run:
    """How one sandboxed run ended: the runner's final message (None if it never sent one)."""

    message: dict | None
    returncode: int
    stdout: str
    stderr: str
    layers: tuple[str, ...]


def _privileged() -> bool:
    """Root with the capabilities to set up namespaces and switch uid (what `_sandbox_child` checks)."""
    if os.geteuid() != 0:
        return False
    with open("/proc/self/status") as f:
        eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    return all(eff >> cap & 1 for cap in (6, 7, 21))  # CAP_SETGID, CAP_SETUID, CAP_SYS_ADMIN


def _sandbox(code: str, job: dict, timeout_s: float, limits: SandboxLimits) -> _Run:
    """Runs `code` in the sandbox with `job` (the mode and what it needs; never an expected value)."""
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    temp_root = _temp_root()
    outer = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=temp_root))
    read_fd = write_fd = -1
    proc = None
    try:
        outer.chmod(0o711)  # `nobody` may traverse to work/ and py/, not list or write
        work, py = outer / "work", outer / "py"
        work.mkdir(mode=0o700)
        py.mkdir(mode=0o755)
        skeleton = outer / "skeleton"  # what the sandbox sees of the temporary root: mount points only
        for mount_point in ("work", "py"):
            (skeleton / outer.name / mount_point).mkdir(mode=0o755, parents=True)
        for d in (skeleton, skeleton / outer.name):
            d.chmod(0o755)
        if _privileged():  # the runner will drop to `nobody`: the work directory must be its own
            os.chown(work, NOBODY, NOBODY)
        nonce = secrets.token_hex(16)
        read_fd, write_fd = os.pipe()
        cfg = {
            "nonce": nonce,
            "result_fd": write_fd,
            "work": str(work),
            "temp_root": temp_root,
            "skeleton": str(skeleton),
            "stdlib_mount": str(py),
            "stdlib_world_readable": _traversable(Path(os.path.realpath(sys.base_prefix))),
            "namespaces": limits.namespaces,
            "uid": NOBODY,
            "gid": NOBODY,
            "timeout_s": timeout_s,
            "code": code,
            **job,
            "limits": {
                "cpu_s": int(timeout_s) + 1,
                "memory_bytes": limits.memory_bytes,
                "file_bytes": limits.file_bytes,
                "open_files": limits.open_files,
                "processes": limits.processes,
            },
        }
        with open(outer / "stdout", "wb") as out, open(outer / "stderr", "wb") as err:
            proc = _start_child(
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
        # The child enforces the deadline itself; this is the backstop if it cannot. The pipe is read
        # while it runs: results can be larger than the pipe's buffer.
        received = _read_while_running(proc, read_fd, time.monotonic() + timeout_s + 5.0)
        _kill_group(proc.pid)
        proc.wait()
        msg, layers = _parse_messages(received, nonce)
        if msg is not None and msg["status"] == "signal":
            msg["cpu_limit_s"] = cfg["limits"]["cpu_s"]
        return _Run(msg, proc.returncode, _tail(outer / "stdout"), _tail(outer / "stderr"), layers)
    finally:
        if proc is not None and proc.returncode is None:
            _kill_group(proc.pid)
            proc.wait()
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(outer, onerror=_force_remove)


def _result(run: _Run, limits: SandboxLimits, judged: Callable[[list], str]) -> CodeResult:
    """The CodeResult of a run: its failure, or the judge's verdict on the values it reported."""
    msg = run.message
    if msg is not None and msg["status"] == "done":
        results = msg.get("results")
        reason = judged(results) if isinstance(results, list) else "sandbox error: malformed results"
    else:
        reason = _reason(msg, run.returncode, limits)
    return CodeResult(reason == "passed", reason, run.stdout, run.stderr, run.layers)


def run_code_tests(
    code: str, tests: str, timeout_s: float = 5.0, limits: SandboxLimits | None = None
) -> CodeResult:
    """Run `code`, then judge it by `tests` (assert and import statements; see `judge.split_asserts`).

    Passes only when every assertion holds, judged in this process on the plain data the sandboxed
    program reported, within the time and resource limits. Never raises for anything the program does;
    raises ValueError for a bad `timeout_s` and `judge.UnsupportedTestError` for tests it cannot judge.
    """
    limits = limits or SandboxLimits()
    try:
        imports, probes, checks = split_asserts(tests)
    except SyntaxError as e:
        return CodeResult(False, f"syntax error: tests.py line {e.lineno}: {e.msg}")
    run = _sandbox(code, {"mode": "probes", "imports": imports, "probes": probes}, timeout_s, limits)
    return _result(run, limits, lambda results: verdict(checks, results))


def run_call_tests(code: str, entry_point: str, cases: list[dict], timeout_s: float = 5.0,
                   limits: SandboxLimits | None = None) -> CodeResult:
    """Run `code`, then `entry_point(*case["args"])` for every case, against `case["expected"]`."""
    limits = limits or SandboxLimits()
    probes, expected = call_checks(entry_point, cases)
    run = _sandbox(code, {"mode": "probes", "imports": [], "probes": probes}, timeout_s, limits)
    return _result(run, limits, lambda results: call_verdict(probes, expected, results))


def run_stdio_tests(code: str, cases: list[dict], timeout_s: float = 5.0,
                    limits: SandboxLimits | None = None) -> CodeResult:
    """Run `code` as a program once per case with `case["input"]` as stdin; its stdout must match
    `case["output"]` (trailing spaces and blank lines aside) and it must exit with status 0."""
    limits = limits or SandboxLimits()
    for i, case in enumerate(cases):
        if not isinstance(case.get("input"), str) or not isinstance(case.get("output"), str):
            raise UnsupportedTestError(f"tests[{i}] must have 'input' and 'output' strings")
    run = _sandbox(code, {"mode": "stdio", "inputs": [c["input"] for c in cases]}, timeout_s, limits)
    return _result(run, limits, lambda results: stdio_verdict([c["output"] for c in cases], results))


def _start_child(args: list[str], **kw) -> subprocess.Popen:
    """Popen, retried on EAGAIN for FORK_RETRY_S: one program's fork bomb must not fail the next one's reward."""
    return retry_on_eagain(lambda: subprocess.Popen(args, **kw), FORK_RETRY_S)


def _read_while_running(proc: subprocess.Popen, fd: int, deadline: float) -> bytes:
    """Everything written to the result pipe until the child ends (or the deadline; MAX_RESULT_BYTES)."""
    chunks, size = [], 0
    while size <= MAX_RESULT_BYTES:
        ready, _, _ = select.select([fd], [], [], 0.02)
        if ready:
            data = os.read(fd, 1 << 16)
            if not data:  # every writer has gone
                break
            chunks.append(data)
            size += len(data)
        elif proc.poll() is not None or time.monotonic() >= deadline:
            break
        if time.monotonic() >= deadline:
            break
    os.set_blocking(fd, False)
    try:  # what is left once the child has gone
        while size <= MAX_RESULT_BYTES and (data := os.read(fd, 1 << 16)):
            chunks.append(data)
            size += len(data)
    except BlockingIOError:
        pass
    return b"".join(chunks)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _parse_messages(received: bytes, nonce: str) -> tuple[dict | None, tuple[str, ...]]:
    """The last well-formed final message carrying our nonce, with the layers of all of them (the
    runner announces its layers when it starts; a timeout is reported by the supervisor)."""
    found, layers = None, []
    for line in received.decode("utf-8", errors="replace").splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("nonce") == nonce and isinstance(msg.get("status"), str):
            layers += [x for x in msg.get("layers", ()) if isinstance(x, str) and x not in layers]
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
