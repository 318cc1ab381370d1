"""Programs written to game a code reward or escape the sandbox, each run through the reward path.

`run_all()` runs every attack and returns {"cases": {name: {"passed", "reason", "layers", "escaped"}},
"host_port_received": [...]}; the tests
(test_rl_sandbox_attacks.py) call it in the test process (root with capabilities) and, through
`python -m tests.sandbox_attacks`, as uid 0 without capabilities and as a plain user. Every attack must
end in a failing reward (the two "control" programs must pass), with nothing left outside the sandbox.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import tempfile
import textwrap
import threading
import time

from muonext.rl.sandbox import TEMP_PREFIX, SandboxLimits, run_call_tests, run_code_tests, run_stdio_tests

SECRET = "expected-value-31337"  # the expected value of the secret attacks: nowhere in the child

FRAME_WALK = """
import gc, json, os, sys

def answer():
    # look everywhere for the expected value or the harness's nonce and result pipe
    found = None
    for obj in gc.get_objects():
        if isinstance(obj, dict):
            if "nonce" in obj and "result_fd" in obj:  # forge the harness's messages
                for status in ("passed", "done"):
                    msg = {"nonce": obj["nonce"], "status": status, "detail": "", "layers": [],
                           "results": [{"value": "forged"}]}
                    os.write(obj["result_fd"], (json.dumps(msg) + "\\n").encode())
            for v in obj.values():
                if isinstance(v, str) and "31337" in v:
                    found = v
        if isinstance(obj, str) and "31337" in obj and obj != "31337":
            found = obj
    frame = sys._getframe()
    while frame is not None:
        for v in list(frame.f_locals.values()) + list(frame.f_globals.values()):
            if isinstance(v, str) and "31337" in v and v != "31337":
                found = v
        frame = frame.f_back
    return found
"""

LIAR_OBJECTS = """
class Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __hash__(self): return 0
    def __lt__(self, other): return True
    def __bool__(self): return True

class LyingInt(int):
    def __eq__(self, other): return True
    def __hash__(self): return 0

def answer():
    return Anything()

def number():
    return LyingInt(0)
"""

PATCH_BUILTINS = """
import builtins, json, math, operator
builtins.abs = lambda x: 0
builtins.isinstance = lambda *a: True
builtins.type = lambda *a: int
builtins.len = lambda x: 3
math.isclose = lambda *a, **k: True
operator.eq = lambda a, b: True
json.dumps = lambda *a, **k: '{"value": 3.0}'

def area(r):
    return 0.0
"""

PASS_MARKERS = """
import sys
print("passed")
print('{"status": "passed", "nonce": "x", "detail": ""}')
sys.stderr.write("passed\\n")

def add(a, b):
    print("ok: all tests passed")
    return 0
"""


def _write_outside(targets: list[str]) -> str:
    lines = ["import os", "escaped = []"]
    for t in targets:
        lines += [
            "try:",
            f"    open({t!r}, 'w').write('escaped')",
            f"    escaped.append({t!r})",
            "except OSError:",
            "    pass",
        ]
    return "\n".join(lines) + "\n"


def _cases(port: int, escape_targets: list[str]) -> dict:
    return {
        # controls: an honest program passes every kind of test in this mode
        "control_asserts": ("asserts", "def add(a, b):\n    return a + b\n", "assert add(2, 3) == 5\n"),
        "control_stdio": (
            "stdio",
            "print(sum(map(int, input().split())))\n",
            [{"input": "2 3\n", "output": "5"}],
        ),
        # the expected value is nowhere the program can look; forged harness messages change nothing
        "frame_walk": ("asserts", FRAME_WALK, f"assert answer() == {SECRET!r}\n"),
        "frame_walk_call": ("call", FRAME_WALK, ("answer", [{"args": [], "expected": SECRET}])),
        "eq_object": ("asserts", LIAR_OBJECTS, "assert answer() == 5\nassert answer() != 5\n"),
        "eq_object_call": ("call", LIAR_OBJECTS, ("answer", [{"args": [], "expected": [1, 2]}])),
        "int_subclass": ("asserts", LIAR_OBJECTS, "assert number() == 7\n"),
        "hash_in_set": ("asserts", LIAR_OBJECTS, "assert answer() in {5, 6}\n"),
        "patched_builtins": (
            "asserts",
            PATCH_BUILTINS,
            "import math\nassert abs(area(1.0) - math.pi) < 1e-9\nassert math.isclose(area(1.0), 3.0)\n",
        ),
        "pass_markers": ("asserts", PASS_MARKERS, "assert add(1, 1) == 2\n"),
        "pass_markers_stdio": ("stdio", PASS_MARKERS, [{"input": "", "output": "3"}]),
        "exit_zero_at_start": ("asserts", "import os\nos._exit(0)\n", "assert f() == 1\n"),
        "exit_zero_in_call": ("asserts", "import os\ndef f():\n    os._exit(0)\n", "assert f() == 1\n"),
        "sys_exit_in_call": (
            "call",
            "import sys\ndef f():\n    sys.exit(0)\n",
            ("f", [{"args": [], "expected": 1}]),
        ),
        "write_outside": (
            "asserts",
            _write_outside(escape_targets) + "def f():\n    return escaped\n",
            "assert f() == ['none']\n",
        ),
        "connect_to_host": (
            "asserts",
            textwrap.dedent(f"""
            import socket
            def f():
                s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
                s.sendall(b"leak")
                return "connected"
            """),
            "assert f() == 'never'\n",
        ),
        "raw_socket_module": (
            "asserts",
            textwrap.dedent(f"""
            import _socket
            def f():
                s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
                s.settimeout(1)
                s.connect(("127.0.0.1", {port}))
                return "connected"
            """),
            "assert f() == 'never'\n",
        ),
        "memory_bomb": (
            "asserts",
            "blocks = []\nwhile True:\n    blocks.append(bytearray(2**20))\n",
            "assert True\n",
        ),
        # last. Where no RLIMIT_NPROC applies (host uid 0) an unbounded bomb fills the host's process table
        # until the kernel has emptied its PID namespace, and the test machine's own forks fail: there the
        # suite asks for 300 children that never exit (still a failing reward, still cleaned up)
        "fork_bomb": (
            "asserts",
            FORK_STORM if os.environ.get("MUONEXT_BOUNDED_FORK_BOMB") else FORK_BOMB,
            "assert True\n",
        ),
    }


def _run(kind: str, code: str, tests, timeout_s: float = 10.0):
    limits = SandboxLimits(memory_bytes=256 * 2**20)
    if kind == "asserts":
        return run_code_tests(code, tests, timeout_s=timeout_s, limits=limits)
    if kind == "call":
        return run_call_tests(code, tests[0], tests[1], timeout_s=timeout_s, limits=limits)
    return run_stdio_tests(code, tests, timeout_s=timeout_s, limits=limits)


def _other_sandbox() -> dict:
    """Sandbox A writes a secret into its work directory and holds it until released (a file the host puts
    into A's work directory once B is done; no fixed sleep, so a slow machine cannot end A early); while
    A holds it, sandbox B searches the temporary root for other sandboxes' files.
    A must pass; B must find nothing; `overlapped` says B ran while A's secret existed."""
    root = tempfile.gettempdir()
    writer = textwrap.dedent("""
        import os, time
        open('secret.txt', 'w').write('the secret of A')
        deadline = time.monotonic() + 100
        while not os.path.exists('release') and time.monotonic() < deadline:
            time.sleep(0.05)
        """)
    reader = textwrap.dedent(f"""
        import glob
        def f():
            found = []
            for path in glob.glob({root!r} + "/**/secret.txt", recursive=True):
                try:
                    found.append(open(path).read())
                except OSError:
                    pass
            return found
        """)
    out = {}
    thread = threading.Thread(
        target=lambda: out.update(writer=run_code_tests(writer, "assert True\n", timeout_s=120))
    )
    thread.start()
    deadline = time.monotonic() + 60
    secrets = []
    while not secrets and time.monotonic() < deadline:
        time.sleep(0.05)
        secrets = glob.glob(f"{root}/{TEMP_PREFIX}*/work/secret.txt")
    out["reader"] = run_code_tests(reader, "assert f() == []\n", timeout_s=30)
    out["overlapped"] = thread.is_alive() and bool(secrets) and all(os.path.exists(p) for p in secrets)
    for path in secrets:
        with open(os.path.join(os.path.dirname(path), "release"), "w"):
            pass
    thread.join()
    return out


FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
FORK_STORM = (
    "import os, time\nfor _ in range(300):\n    if os.fork() == 0:\n        time.sleep(3600)\n"
    "while True:\n    pass\n"
)


def _process_count() -> int:
    return sum(name.isdigit() for name in os.listdir("/proc"))


def _settle(baseline: int, slack: int = 64, wait_s: float = 60.0) -> None:
    """Wait until the host's processes are back near `baseline`: where RLIMIT_NPROC cannot apply (uid 0
    of the host), a fork bomb's processes are still being killed after its sandbox has returned, and
    the next case's fork or thread start would fail with EAGAIN. Stops once the count no longer falls
    (other work on the machine)."""
    previous = None
    falling_at = time.monotonic()
    deadline = falling_at + wait_s
    while time.monotonic() < deadline:
        count = _process_count()
        if count <= baseline + slack:
            return
        if previous is None or count < previous:
            falling_at = time.monotonic()
        elif time.monotonic() - falling_at > 3.0:  # no longer falling: the rest is not ours
            return
        previous = count
        time.sleep(0.1)


def run_all() -> dict:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn.recv(100))
                conn.close()
            except OSError:
                pass

    listener = threading.Thread(target=accept)
    listener.start()
    unique = f"muonext-escape-{os.getpid()}-{time.monotonic_ns()}"
    targets = [
        f"/tmp/{unique}",
        os.path.join(os.path.dirname(os.path.abspath(__file__)), unique),
        f"/root/{unique}",
        os.path.join(os.path.expanduser("~"), unique),
    ]
    report = {}
    baseline = _process_count()
    try:
        for name, (kind, code, tests) in _cases(port, targets).items():
            r = _run(kind, code, tests)
            _settle(baseline)
            escaped = [t for t in targets if os.path.exists(t)]
            report[name] = {
                "passed": r.passed,
                "reason": r.reason,
                "layers": list(r.layers),
                "escaped": escaped,
            }
        other = _other_sandbox()
        for who in ("writer", "reader"):
            r = other[who]
            report[f"other_sandbox_{who}"] = {
                "passed": r.passed,
                "reason": r.reason,
                "layers": list(r.layers),
                "escaped": [],
            }
    finally:
        stop.set()
        listener.join()
        server.close()
        for t in targets:
            if os.path.exists(t):
                os.unlink(t)
    return {
        "cases": report,
        "host_port_received": [bytes(a).decode(errors="replace") for a in accepted],
        "other_sandbox_overlapped": other["overlapped"],
    }


if __name__ == "__main__":
    print(json.dumps({"uid": os.geteuid(), **run_all()}))
