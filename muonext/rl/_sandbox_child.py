"""Sandbox trampoline: the first process of a `run_code_tests` call (see sandbox.py for the policy).

Started as `python -I -S _sandbox_child.py` in a new session with an empty environment. It reads one
JSON line of configuration (limits, paths, program, tests and a per-run nonce) from stdin, then:

1. sets the resource limits (CPU, address space, file size, open files, no core dumps);
2. as root: unshares mount, network, PID, IPC and UTS namespaces; in the private mount namespace the
   work directory is bind-mounted read-write, the interpreter's standard library is bind-mounted where
   `nobody` can read it, and every mount point is remounted read-only and nosuid;
3. forks the runner (PID 1 of the new PID namespace, so when it dies the kernel kills everything it
   started); the runner drops to the unprivileged uid (with RLIMIT_NPROC, which root ignores) and
   `no_new_privs`, then executes the program and the tests in one namespace;
4. this process stays outside, as root, waits for the runner with the wall-clock deadline, kills it on
   timeout and reports how it ended.

Why a separate process instead of `preexec_fn`: the parent has imported torch and runs threads;
`preexec_fn` runs Python between fork and exec in such a process, which CPython documents as unsafe
(deadlocks on locks held by other threads). Here the same calls run in a fresh single-threaded
interpreter.

The runner reports on the result pipe as one JSON line carrying the nonce, and only from its own PID.
The nonce is what makes `sys.exit(0)` / `os._exit(0)` inside the program a failure instead of a pass;
program and tests share one interpreter, so a program written to attack this harness from inside
(e.g. by walking frames to find the nonce) is outside what that check stops.
"""

import builtins
import ctypes
import json
import os
import resource
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SIGKILL = 9

_libc = ctypes.CDLL(None, use_errno=True)
_write = os.write  # bound before any untrusted code runs


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target: str, flags: int, fstype=None) -> None:
    _check(
        _libc.mount(
            src.encode() if src else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            None,
        ),
        f"mount {target}",
    )


def _mount_points() -> list:
    """Mount points of this namespace, parents before children (mountinfo field 5, octal-unescaped)."""
    points = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            raw = line.split()[4]
            points.append(raw.decode("unicode_escape").encode("latin-1").decode())
    return points


def _read_only_view(work: str, stdlib_src: str, stdlib_dst: str) -> None:
    """Everything read-only and nosuid except `work`; stdlib visible at `stdlib_dst`. Raises on failure."""
    _mount(None, "/", MS_REC | MS_PRIVATE)  # nothing we do here propagates to the host
    _mount(work, work, MS_BIND)
    if stdlib_dst:
        _mount(stdlib_src, stdlib_dst, MS_BIND | MS_REC)
    for point in _mount_points():
        if point == work:
            continue
        keep = os.statvfs(point).f_flag & (MS_NODEV | MS_NOEXEC)  # ST_* and MS_* agree for these bits
        try:
            _mount(None, point, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | keep)
        except OSError:
            if point == "/" or point == stdlib_dst:
                raise  # the guarantee depends on these two; special mounts below may refuse


def _block_sockets() -> None:
    """Best-effort network block for when no network namespace exists: `import _socket` bypasses it."""
    import socket

    def refuse(*args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")

    socket.socket = refuse  # type: ignore[assignment]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.socketpair = refuse  # type: ignore[assignment]


def _count_own_processes(uid: int) -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                n += os.stat(f"/proc/{pid}").st_uid == uid
            except OSError:
                pass
    return n


def _describe(exc: BaseException, filename: str, source: str) -> str:
    """`line N: <source line>: Type: message` for the innermost frame of `filename`."""
    lineno, tb = None, exc.__traceback__
    while tb is not None:  # a plain walk: a RecursionError carries ~1000s of frames
        if tb.tb_frame.f_code.co_filename == filename:
            lineno = tb.tb_lineno
        tb = tb.tb_next
    where = ""
    if lineno:
        lines = source.splitlines()
        text = lines[lineno - 1].strip() if lineno <= len(lines) else ""
        where = f"line {lineno}: {text}: "
    msg = str(exc)
    return f"{where}{type(exc).__name__}" + (f": {msg}" if msg else "")


def _run(cfg: dict, report) -> None:
    """The runner: compile, run the program, run the tests, report once."""
    code, tests = cfg["code"], cfg["tests"]
    try:
        code_obj = compile(code, "solution.py", "exec")
        test_obj = compile(tests, "tests.py", "exec")
    except SyntaxError as e:
        report("syntax_error", f"{e.filename} line {e.lineno}: {e.msg}")
        return
    except (MemoryError, RecursionError, ValueError) as e:
        report("syntax_error", f"could not compile: {type(e).__name__}: {e}")
        return
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    for stage, obj, src, filename in (
        ("program", code_obj, code, "solution.py"),
        ("tests", test_obj, tests, "tests.py"),
    ):
        try:
            exec(obj, namespace)  # noqa: S102 - running the program is the point
        except SystemExit as e:
            report("early_exit", f"{stage} called exit({e.code!r}) before the tests finished")
            return
        except MemoryError as e:
            report("memory", _describe(e, filename, src))
            return
        except AssertionError as e:
            report("test_failed" if stage == "tests" else "program_error", _describe(e, filename, src))
            return
        except BaseException as e:  # noqa: BLE001 - any failure of untrusted code is a result
            report("test_error" if stage == "tests" else "program_error", _describe(e, filename, src))
            return
    report("passed", "")


def main() -> None:
    cfg = json.loads(sys.stdin.readline())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    nonce, result_fd, work = cfg["nonce"], cfg["result_fd"], cfg["work"]
    lim = cfg["limits"]
    layers: list = []

    def emit(status: str, detail: str, **extra) -> None:
        msg = {"nonce": nonce, "status": status, "detail": detail[-2000:], "layers": layers, **extra}
        _write(result_fd, (json.dumps(msg) + "\n").encode())

    cpu = int(lim["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))  # soft == hard: SIGKILL, even for a PID-ns init
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["open_files"],) * 2)
    layers += ["rlimits", "isolated_interpreter", "clean_env", "temp_cwd"]

    root = os.geteuid() == 0
    stdlib_src = os.path.realpath(sys.base_prefix)
    stdlib_dst = ""
    if root and cfg["namespaces"]:
        flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        if _libc.unshare(flags) == 0:
            layers += ["net_namespace", "pid_namespace"]
            try:
                _read_only_view(work, stdlib_src, cfg["stdlib_mount"])
                stdlib_dst = cfg["stdlib_mount"]
                layers.append("read_only_fs")
            except OSError:
                pass
    # Without the bind mount, dropping to `nobody` only works if it can already read the stdlib.
    can_drop = root and (bool(stdlib_dst) or cfg["stdlib_world_readable"])

    if root and not can_drop:
        emit(
            "sandbox_error",
            "running as root but cannot drop to an unprivileged uid (no mount namespace "
            "and the standard library is not readable by it); refusing to run untrusted code as root",
        )
        os._exit(70)

    pid = os.fork()
    if pid == 0:  # the runner
        try:
            _libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)
            os.chdir(work)
            if "read_only_fs" in layers:  # a /proc of our own PID namespace: host processes disappear
                try:
                    _mount("proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "proc")
                    layers.append("private_proc")
                except OSError:
                    pass
            if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
                layers.append("no_new_privs")
            if can_drop:
                resource.setrlimit(resource.RLIMIT_NPROC, (lim["processes"],) * 2)
                os.setgroups([])
                os.setgid(cfg["gid"])
                os.setuid(cfg["uid"])
                layers += ["uid_drop", "nproc"]
            elif not root:
                n = _count_own_processes(os.getuid()) + lim["processes"]
                resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
                layers.append("nproc")
            if stdlib_dst:
                sys.path[:] = [
                    stdlib_dst + p[len(stdlib_src) :] if p.startswith(stdlib_src) else p for p in sys.path
                ]
                for mod in list(sys.modules.values()):  # packages already imported (encodings, ...)
                    path = getattr(mod, "__path__", None)
                    if isinstance(path, list):
                        path[:] = [
                            stdlib_dst + p[len(stdlib_src) :] if p.startswith(stdlib_src) else p for p in path
                        ]
                sys.path_importer_cache.clear()
            if "net_namespace" not in layers:
                _block_sockets()
                layers.append("socket_guard")
        except BaseException as e:  # noqa: BLE001
            emit("sandbox_error", f"setting up the runner failed: {type(e).__name__}: {e}")
            os._exit(70)
        emit("started", "")  # tells the parent which layers are in force, whoever reports the end
        me = os.getpid()

        def report(status: str, detail: str) -> None:
            if os.getpid() == me:  # a forked copy of the runner never speaks for it
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                except BaseException:  # noqa: BLE001, S110 - a closed stdout must not stop the report
                    pass
                emit(status, detail)
            os._exit(0)

        _run(cfg, report)
        os._exit(0)

    # The supervisor: outside the PID namespace, still root; enforces the wall-clock deadline.
    deadline = time.monotonic() + cfg["timeout_s"]
    delay = 0.001
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() >= deadline:
            os.kill(pid, SIGKILL)  # kills the PID namespace, i.e. every process the program started
            _, status, usage = os.wait4(pid, 0)
            emit(
                "timeout", f"wall-clock limit of {cfg['timeout_s']} s", cpu_s=usage.ru_utime + usage.ru_stime
            )
            os._exit(0)
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    if os.WIFSIGNALED(status):
        emit("signal", "", signal=os.WTERMSIG(status), cpu_s=usage.ru_utime + usage.ru_stime)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 0)


if __name__ == "__main__":
    main()
