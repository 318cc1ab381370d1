"""Every attack of tests/sandbox_attacks.py is a failing reward, in three settings: root with
capabilities (this process), uid 0 without capabilities (as in many containers) and a plain user
(uid 1000 in a user namespace; files are still root's underneath, so an escape would show). The
isolation layers each setting must have are checked, not skipped: a missing layer fails the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .sandbox_attacks import run_all

ROOT = Path(__file__).resolve().parents[1]
COMMON = {
    "rlimits",
    "isolated_interpreter",
    "clean_env",
    "net_namespace",
    "pid_namespace",
    "read_only_fs",
    "private_tmp",
    "private_proc",
    "no_new_privs",
}
SETTINGS = {
    "root": ([], COMMON | {"uid_drop", "nproc"}),
    "root_without_capabilities": (
        ["setpriv", "--inh-caps=-all", "--bounding-set=-all"],
        COMMON | {"user_namespace"},
    ),
    # uid 1000 here is uid 0 of the host underneath, which the kernel exempts from RLIMIT_NPROC: no
    # `nproc` (a real unprivileged uid gets it); fork bombs are ended by the deadline and the PID namespace
    "plain_user": (
        ["unshare", "--user", "--map-user=1000", "--map-group=1000"],
        COMMON | {"user_namespace"},
    ),
}
CONTROLS = ("control_asserts", "control_stdio", "other_sandbox_writer", "other_sandbox_reader")


@pytest.fixture(scope="module", params=list(SETTINGS))
def setting(request):
    name = request.param
    prefix, layers = SETTINGS[name]
    if not prefix:
        return name, layers, run_all()
    # host uid 0 without a process limit: a bounded fork storm instead of an unbounded bomb (see FORK_STORM)
    env = {**os.environ, **({} if "nproc" in layers else {"MUONEXT_BOUNDED_FORK_BOMB": "1"})}
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "tests.sandbox_attacks"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["uid"] == (0 if name.startswith("root") else 1000), out["uid"]
    return name, layers, out


def test_every_attack_fails_its_reward(setting):
    name, _, out = setting
    for case, r in out["cases"].items():
        if case in CONTROLS:
            assert r["passed"], f"{name}: control {case} should pass: {r['reason']}"
        else:
            assert not r["passed"], f"{name}: attack {case} passed: {r}"


def test_the_isolation_layers_were_in_force(setting):
    name, layers, out = setting
    for case, r in out["cases"].items():
        missing = layers - set(r["layers"])
        if case in ("exit_zero_at_start",) and not r["layers"]:
            continue  # died before the runner announced its layers: nothing ran outside them either
        assert not missing, f"{name}: {case} ran without {sorted(missing)} (had {r['layers']})"


def test_nothing_escaped_the_sandbox(setting):
    name, _, out = setting
    assert out["host_port_received"] == [], f"{name}: a program reached a port on the host"
    for case, r in out["cases"].items():
        assert r["escaped"] == [], f"{name}: {case} wrote {r['escaped']}"


def test_another_sandboxs_files_are_out_of_sight(setting):
    name, _, out = setting
    assert out["other_sandbox_overlapped"], (
        f"{name}: the reader did not run while the writer's secret existed"
    )
    assert out["cases"]["other_sandbox_reader"]["passed"], out["cases"]["other_sandbox_reader"]


def test_the_failures_say_why(setting):
    name, _, out = setting
    reasons = {case: r["reason"] for case, r in out["cases"].items()}
    assert reasons["frame_walk"].startswith("test failed:"), reasons[
        "frame_walk"
    ]  # found nothing, forged nothing
    assert "not plain data" in reasons["eq_object"], reasons["eq_object"]
    assert "not plain data" in reasons["int_subclass"], reasons["int_subclass"]
    assert reasons["patched_builtins"].startswith("test failed: line 2"), reasons["patched_builtins"]
    assert "exit" in reasons["exit_zero_in_call"], reasons["exit_zero_in_call"]
    assert any(w in reasons["connect_to_host"] for w in ("unreachable", "refused")), reasons[
        "connect_to_host"
    ]
    assert reasons["memory_bomb"].startswith("memory limit") or "signal" in reasons["memory_bomb"], reasons
