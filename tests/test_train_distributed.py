"""torchrun (gloo, CPU) trains the `debug` preset like one process with the same global batch (fp32
Newton–Schulz): a replicated model (DDP + DistributedMuon, ZeRO-1) on 2 processes, and a sharded one
(FSDP2 + expert parallelism + Muon on DTensors) on 4, whose DCP checkpoint resumes on 2 and on 1; a
rank killed mid-run ends the run with the failure named, not a hang."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from muonext.train import TrainConfig, load_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.distributed

SETTINGS = {"max_corpus_bytes": 200_000, "tokenizer_train_bytes": 100_000, "max_steps": 6, "eval_every": 3,
            "ns_dtype": "fp32", "device": "cpu", "progress": False, "export": False, "plots": False,
            "sample_tokens": 0}


def train_here(out, cache, **kw):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = TrainConfig.from_preset("debug", out=str(out), cache_dir=str(cache), **{**SETTINGS, **kw})
        return train(config)
    finally:
        torch.set_num_threads(old)


def cli_flags(out, cache, **overrides):
    flags = ["--preset", "debug", "--out", str(out), "--cache-dir", str(cache)]
    for key, value in {**SETTINGS, **overrides}.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    return flags


def torchrun(n: int, tmp_path, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           str(ROOT / "examples" / "train_moonlight.py"), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def records(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_two_replicas_match_one_process(tmp_path):
    cache = tmp_path / "cache"
    single = train_here(tmp_path / "one", cache)  # first: it trains (and caches) the tokenizer both use
    assert single.step == 6
    torchrun(2, tmp_path, *cli_flags(tmp_path / "two", cache), "--dp-replicate", "2", "--stop-at", "3")

    ck = load_checkpoint(tmp_path / "two" / "checkpoints" / "step_00000003")
    assert ck.world_size == 2 and ck.shared["loader"] == {"epoch": 0, "index": 3 * 8}
    assert len(ck.rank_state(1)["optimizer"]["state"]) > 0  # rank 1 holds its own optimizer shard
    train_here(tmp_path / "two", cache, resume="auto")  # steps 4..6 in one process from the 2-rank shards

    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 7))
    for a, b in zip(one, two):
        for key in ("loss", "val_loss", "grad_norm"):
            if key in a:
                err = abs(a[key] - b[key]) / abs(a[key])
                assert err < 1e-4, f"step={a['step']} {key=} one={a[key]} two={b[key]} {err=}"


def assert_losses_follow(reference: list[dict], run: list[dict], tol: float = 1e-4) -> None:
    by_step = {r["step"]: r for r in reference}
    for b in run:
        a = by_step[b["step"]]
        for key in ("loss", "val_loss", "grad_norm"):
            if key in a:
                err = abs(a[key] - b[key]) / abs(a[key])
                assert err < tol, f"step={a['step']} {key=} one={a[key]} sharded={b[key]} {err=}"


def test_sharded_run_resumes_on_fewer_processes_and_exports(tmp_path):
    """4 processes (dp_shard 4, ep 2) to step 3; the DCP checkpoint resumes on 2 (dp_shard 2, ep 2), which
    finishes and exports from the shards; its step-5 checkpoint resumes in one process for step 6."""
    from safetensors.torch import load_file

    cache = tmp_path / "cache"
    train_here(tmp_path / "one", cache, export=True)
    sharded = tmp_path / "sharded"
    torchrun(4, tmp_path, *cli_flags(sharded, cache), "--dp-shard", "4", "--ep", "2", "--stop-at", "3")
    ck = load_checkpoint(sharded / "checkpoints" / "step_00000003")  # verifies every file's sha256
    assert ck.sharded and ck.world_size == 4
    manifest = json.loads((ck.path / "manifest.json").read_text())
    assert "dcp/.metadata" in manifest["files"] and sum(f.startswith("dcp/") for f in manifest["files"]) > 1
    torchrun(2, tmp_path, *cli_flags(sharded, cache, export=True, sample_tokens=8, save_every=1),
             "--dp-shard", "2", "--ep", "2", "--resume")
    train_here(tmp_path / "after", cache, resume=str(sharded / "checkpoints" / "step_00000005"))

    one = records(tmp_path / "one")
    assert [r["step"] for r in records(sharded)] == list(range(1, 7))
    assert_losses_follow(one, records(sharded))
    assert [r["step"] for r in records(tmp_path / "after")] == [6]
    assert_losses_follow(one, records(tmp_path / "after"))
    assert (sharded / "sample.txt").read_text()
    shard = "model-00001-of-00001.safetensors"
    mine, ref = load_file(sharded / "export" / shard), load_file(tmp_path / "one" / "export" / shard)
    assert mine.keys() == ref.keys()
    for k in ref:
        err = float((mine[k].double() - ref[k].double()).norm() / ref[k].double().norm().clamp_min(1e-30))
        assert err < 1e-5, f"{k}: {err=}"


def _rank_pids(parent: int) -> dict[int, int]:
    """{RANK: pid} of the worker processes under a torchrun process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        rank = [v[5:] for v in env if v.startswith(b"RANK=")]
        if rank and int(stat[1]) == parent:
            found[int(rank[0])] = int(entry)
    return found


def test_a_killed_rank_ends_the_run_naming_it(tmp_path):
    import signal
    import time

    cache = tmp_path / "cache"
    train_here(tmp_path / "warm", cache, max_steps=1)  # trains the tokenizer the run below reads
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3",
           str(ROOT / "examples" / "train_moonlight.py"),
           *cli_flags(tmp_path / "run", cache, max_steps=100_000, batch_size=9),
           "--dp-shard", "3", "--log-every", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path)
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.monotonic() + 180
        logged = lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2  # noqa: E731
        while time.monotonic() < deadline and not logged():
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        ranks = _rank_pids(proc.pid)
        assert sorted(ranks) == [0, 1, 2], ranks
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.monotonic()
        output, _ = proc.communicate(timeout=120)
        ended = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, output[-3000:]
    assert ended < 60, f"{ended=}"
    assert "rank      : 1" in output and "SIGKILL" in output, output[-3000:]
