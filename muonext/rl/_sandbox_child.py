"""Sandbox trampoline: the first process of a sandboxed run (see sandbox.py for the policy).

Started as `python -I -S _sandbox_child.py` in a new session with an empty environment. It reads one
JSON line of configuration (limits, paths, the program, what to run it on, a per-run nonce) from stdin:

1. sets the resource limits (CPU, address space, file size, open files, no core dumps);
2. isolates: as root with the capabilities for it, unshares mount, network, PID, IPC and UTS
   namespaces; otherwise (a plain user, or uid 0 without capabilities, as in many containers) the same
   inside a new user namespace where it maps itself to root, as bubblewrap does. In the private mount
   namespace the temporary root is replaced by a skeleton holding only this run's directories (other
   sandboxes' work directories disappear), the work directory is bound back read-write, the standard
   library is bound where the runner can read it, and every mount point is remounted read-only and
   nosuid;
3. forks the runner (PID 1 of the new PID namespace, so when it dies the kernel kills everything it
   started); as privileged root the runner drops to `nobody` (with RLIMIT_NPROC, which root ignores);
   it sets `no_new_privs`, runs the program, then
   * mode "probes": the test file's imports and each probe expression, reporting each value as plain
     data (`_to_wire`) or the error it raised;
   * mode "stdio": the program once per input, in a fresh fork with that input as stdin, reporting
     each run's stdout and exit status;
4. this process stays outside, waits for the runner with the wall-clock deadline, kills it on timeout
   and reports how it ended.

The runner never sees an expected value: the parent compares (judge.py). Whatever the program does to
this interpreter (walk its frames, patch builtins, print, exit) it can at most misreport its own
outputs. Messages carry the nonce and are sent only from the runner's PID, so garbage on the pipe is
ignored.

Why a separate process instead of `preexec_fn`: the parent has imported torch and runs threads;
`preexec_fn` runs Python between fork and exec in such a process, which CPython documents as unsafe
(deadlocks on locks held by other threads). Here the same calls run in a fresh single-threaded
interpreter.
"""

import builtins
import ctypes
import json
import math
import os
import resource
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SIGKILL = 9
CAP_SETGID, CAP_SETUID, CAP_SYS_ADMIN = 6, 7, 21
WIRE_LIMIT = 8 * 2**20  # characters of JSON one run may report
FORK_RETRY_S = 10.0  # how long a fork (the sandbox's start, the runner) that fails with EAGAIN is retried

_libc = ctypes.CDLL(None, use_errno=True)
# bound before any untrusted code runs: a program that patches builtins or json cannot mute the runner
_write, _quote = os.write, json.encoder.encode_basestring_ascii
_type, _repr, _len, _str, _join = type, repr, len, str, ", ".join
_int_repr, _float_repr = int.__repr__, float.__repr__


def _dumps(v) -> str:
    """JSON of plain data (what `_to_wire` made and the messages), with nothing the program can patch."""
    t = _type(v)
    if v is None:
        return "null"
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return _int_repr(v)
    if t is float:
        return _float_repr(v)
    if t is str:
        return _quote(v)
    if t is list:
        return "[" + _join([_dumps(x) for x in v]) + "]"
    if t is dict:
        return "{" + _join([_quote(k) + ": " + _dumps(x) for k, x in v.items()]) + "}"
    raise TypeError(f"cannot send a {t.__name__}")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target: str, flags: int, fstype=None, data=None) -> None:
    _check(
        _libc.mount(
            src.encode() if src else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _capable(*caps: int) -> bool:
    """Whether this process holds every capability in `caps` (effective set)."""
    with open("/proc/self/status") as f:
        eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    return all(eff >> c & 1 for c in caps)


def _enter_user_namespace(flags: int) -> bool:
    """unshare with a new user namespace in which this process is root. Our uid is mapped to root there,
    except for uid 0 without capabilities, which the kernel refuses to map (CAP_SETFCAP): that process
    keeps its real uid for files, and still holds the namespace's capabilities for mounts."""
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(CLONE_NEWUSER | flags) != 0:
        return False
    maps = [("/proc/self/setgroups", "deny"), ("/proc/self/gid_map", f"0 {gid} 1")]
    if uid != 0:
        maps.append(("/proc/self/uid_map", f"0 {uid} 1"))
    for path, text in maps:
        with open(path, "w") as f:
            f.write(text)
    return True


def _mount_points() -> list:
    """Mount points of this namespace, parents before children (mountinfo field 5, octal-unescaped)."""
    points = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            raw = line.split()[4]
            points.append(raw.decode("unicode_escape").encode("latin-1").decode())
    return points


def _read_only_view(work: str, temp_root: str, skeleton: str, stdlib_src: str, stdlib_dst: str) -> None:
    """Everything read-only and nosuid except `work`; the temporary root showing only this run's
    (skeleton: empty mount points for work and the stdlib, prepared by the parent). Raises on failure."""
    _mount(None, "/", MS_REC | MS_PRIVATE)  # nothing we do here propagates to the host
    work_fd = os.open(work, os.O_PATH | os.O_DIRECTORY)
    if temp_root != "/":  # other sandboxes' work directories (maybe the same uid) vanish
        _mount(skeleton, temp_root, MS_BIND)  # no new inodes: a user namespace may not create them
    _mount(f"/proc/self/fd/{work_fd}", work, MS_BIND)
    os.close(work_fd)
    if stdlib_dst:
        _mount(stdlib_src, stdlib_dst, MS_BIND | MS_REC)
    for point in _mount_points():
        if point == work:
            continue
        keep = os.statvfs(point).f_flag & (MS_NODEV | MS_NOEXEC)  # ST_* and MS_* agree for these bits
        try:
            _mount(None, point, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | keep)
        except OSError:
            if point in ("/", stdlib_dst, temp_root):
                raise  # the guarantee depends on these; special mounts below may refuse


def _block_sockets() -> None:
    """Best-effort network block for when no network namespace exists: `import _socket` bypasses it."""
    import socket

    def refuse(*args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")

    socket.socket = refuse  # type: ignore[assignment]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.socketpair = refuse  # type: ignore[assignment]


def retry_on_eagain(call, seconds: float):
    """call(), retried while it fails with EAGAIN for up to `seconds`: the host's process slots can be full
    for a moment while the kernel empties the PID namespace of an earlier program's fork bomb. Also used by
    sandbox.py for starting this file."""
    deadline, pause = time.monotonic() + seconds, 0.05
    while True:
        try:
            return call()
        except BlockingIOError:
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(2 * pause, 1.0)


def _outer_uid(uid: int) -> int:
    """`uid` as the parent user namespace sees it (this namespace's uid_map); the kernel exempts uid 0
    of the initial namespace from RLIMIT_NPROC even when it is mapped to another uid here."""
    try:
        with open("/proc/self/uid_map") as f:
            for line in f:
                inside, outside, count = (int(x) for x in line.split())
                if inside <= uid < inside + count:
                    return outside + uid - inside
    except (OSError, ValueError):
        pass
    return uid


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
        text = lines[lineno - 1].strip() if lineno <= _len(lines) else ""
        where = f"line {lineno}: {text}: "
    try:
        msg = _str(exc)
    except BaseException:  # noqa: BLE001 - a program's exception may refuse to print
        msg = "(unprintable)"
    return f"{where}{_type(exc).__name__}" + (f": {msg}" if msg else "")


# -- plain data --------------------------------------------------------------------------------------

def _to_wire(value, budget: list, depth: int = 0):
    """JSON-able plain data for `value`, exact types only (no subclass, so no model-made __eq__ travels):
    None, bool, int, float, str, list, tuple, dict, set, frozenset. Raises TypeError otherwise."""
    if depth > 100:
        raise ValueError("result nested more than 100 deep")
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError("result too large")
    t = _type(value)
    if value is None or t is bool or t is int or t is str:
        if t is str:
            budget[0] -= _len(value)
        elif t is int:
            budget[0] -= _len(_repr(value))
        if budget[0] < 0:
            raise ValueError("result too large")
        return value
    if t is float:
        return value if math.isfinite(value) else {"float": _repr(value)}
    if t is list:
        return [_to_wire(v, budget, depth + 1) for v in value]
    if t is tuple:
        return {"tuple": [_to_wire(v, budget, depth + 1) for v in value]}
    if t is set or t is frozenset:
        return {t.__name__: [_to_wire(v, budget, depth + 1) for v in value]}
    if t is dict:
        pairs = [[_to_wire(k, budget, depth + 1), _to_wire(v, budget, depth + 1)] for k, v in value.items()]
        return {"dict": pairs}
    raise TypeError(f"the result is a {t.__name__}, not plain data (None, bool, int, float, str, list, "
                    "tuple, dict, set)")


# -- the runner --------------------------------------------------------------------------------------

def _run_program(code: str, namespace: dict, report) -> bool:
    """Compiles and runs the program in `namespace`; on failure reports why and returns False."""
    try:
        code_obj = compile(code, "solution.py", "exec")
    except SyntaxError as e:
        report("syntax_error", f"{e.filename} line {e.lineno}: {e.msg}")
        return False
    except (MemoryError, RecursionError, ValueError) as e:
        report("syntax_error", f"could not compile: {type(e).__name__}: {e}")
        return False
    try:
        exec(code_obj, namespace)  # noqa: S102 - running the program is the point
    except SystemExit as e:
        report("early_exit", f"program called exit({e.code!r}) before the tests ran")
        return False
    except MemoryError as e:
        report("memory", _describe(e, "solution.py", code))
        return False
    except BaseException as e:  # noqa: BLE001 - any failure of untrusted code is a result
        report("program_error", _describe(e, "solution.py", code))
        return False
    return True


def _run_probes(cfg: dict, report) -> None:
    """The program, the tests' imports, then every probe: {"value": wire} or {"error": description}."""
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    if not _run_program(cfg["code"], namespace, report):
        return
    results, budget = [], [WIRE_LIMIT]
    for source in cfg["imports"]:
        try:
            exec(compile(source, "tests.py", "exec"), namespace)  # noqa: S102 - the test file's imports
        except BaseException as e:  # noqa: BLE001
            report("test_error", f"{source}: {type(e).__name__}: {e}")
            return
    for source in cfg["probes"]:
        try:
            value = eval(compile(source, "tests.py", "eval"), namespace)  # noqa: S307 - the program's outputs
            results.append({"value": _to_wire(value, budget)})
        except SystemExit as e:
            report("early_exit", f"the program called exit({e.code!r}) while the tests ran")
            return
        except BaseException as e:  # noqa: BLE001 - a probe that raises is a failed test, told in the parent
            results.append({"error": _describe(e, "solution.py", cfg["code"])})
    report("done", "", results=results)


def _run_stdio(cfg: dict, report) -> None:
    """The program as __main__ once per input, each in a fresh fork: stdout and exit status of each."""
    results = []
    for i, text in enumerate(cfg["inputs"]):
        stdin_path, stdout_path = f"stdin_{i}.txt", f"stdout_{i}.txt"
        with open(stdin_path, "w") as f:
            f.write(text)
        pid = os.fork()
        if pid == 0:  # one run of the program: stdin from the input, stdout to its own file
            status = 1
            try:
                fd = os.open(stdin_path, os.O_RDONLY)
                os.dup2(fd, 0)
                out = os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(out, 1)
                sys.stdin = open(0, closefd=False)  # noqa: SIM115
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
                program = compile(cfg["code"], "solution.py", "exec")
                exec(program, {"__name__": "__main__", "__builtins__": builtins})  # noqa: S102
                status = 0
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException as e:  # noqa: BLE001
                try:
                    sys.stderr.write(_describe(e, "solution.py", cfg["code"]) + "\n")
                except BaseException:  # noqa: BLE001, S110
                    pass
            try:
                sys.stdout.flush()
            except BaseException:  # noqa: BLE001, S110
                pass
            os._exit(status)
        _, wait_status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(wait_status)
        try:
            with open(stdout_path, errors="replace") as f:
                out = f.read(WIRE_LIMIT)
        except OSError as e:
            out = f"(no output: {e})"
        results.append({"stdout": out, "exit": code})
    report("done", "", results=results)


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
        _write_all(result_fd, (_dumps(msg) + "\n").encode())

    cpu = int(lim["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))  # soft == hard: SIGKILL, even for a PID-ns init
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["open_files"],) * 2)
    layers += ["rlimits", "isolated_interpreter", "clean_env", "temp_cwd"]

    own_processes = _count_own_processes(os.getuid())  # before a user namespace renames our uid
    nproc_exempt = _outer_uid(os.getuid()) == 0  # uid 0 of the host, seen as another uid in a namespace
    # root that can set up namespaces and switch uid; anyone else goes through a user namespace
    real_root = os.geteuid() == 0
    privileged = real_root and _capable(CAP_SYS_ADMIN, CAP_SETUID, CAP_SETGID)
    stdlib_src = os.path.realpath(sys.base_prefix)
    stdlib_dst = ""
    if cfg["namespaces"]:
        flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        entered = _libc.unshare(flags) == 0 if privileged else _enter_user_namespace(flags)
        if entered:
            layers += ["net_namespace", "pid_namespace"] + ([] if privileged else ["user_namespace"])
            try:
                _read_only_view(work, cfg["temp_root"], cfg["skeleton"], stdlib_src, cfg["stdlib_mount"])
                stdlib_dst = cfg["stdlib_mount"]
                layers += ["read_only_fs", "private_tmp"]
            except OSError:
                pass
    # Without the bind mount, dropping to `nobody` only works if it can already read the stdlib.
    can_drop = privileged and (bool(stdlib_dst) or cfg["stdlib_world_readable"])
    if privileged and not can_drop:
        emit(
            "sandbox_error",
            "running as root but cannot drop to an unprivileged uid (no mount namespace "
            "and the standard library is not readable by it); refusing to run untrusted code as root",
        )
        os._exit(70)

    pid = retry_on_eagain(os.fork, FORK_RETRY_S)
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
            elif not real_root and not nproc_exempt:  # counts the real uid's processes; root is exempt
                n = own_processes + lim["processes"]
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

        def report(status: str, detail: str, **extra) -> None:
            if os.getpid() == me:  # a forked copy of the runner never speaks for it
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                except BaseException:  # noqa: BLE001, S110 - a closed stdout must not stop the report
                    pass
                emit(status, detail, **extra)
            os._exit(0)

        (_run_stdio if cfg["mode"] == "stdio" else _run_probes)(cfg, report)
        os._exit(0)

    # The supervisor: outside the PID namespace; enforces the wall-clock deadline.
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


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[_write(fd, data):]


if __name__ == "__main__":
    main()
