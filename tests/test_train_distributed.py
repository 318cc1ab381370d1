"""torchrun --nproc_per_node=2 (gloo, CPU) trains the `debug` preset like one process with the same global
batch (DistributedMuon, fp32 Newton–Schulz), and its sharded checkpoint resumes in one process."""

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
        return train(TrainConfig.from_preset("debug", out=str(out), cache_dir=str(cache), **SETTINGS, **kw))
    finally:
        torch.set_num_threads(old)


def cli_flags(out, cache):
    flags = ["--preset", "debug", "--out", str(out), "--cache-dir", str(cache)]
    for key, value in SETTINGS.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    return flags


def records(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one(tmp_path):
    cache = tmp_path / "cache"
    single = train_here(tmp_path / "one", cache)  # first: it trains (and caches) the tokenizer both use
    assert single.step == 6
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "examples" / "train_moonlight.py"), *cli_flags(tmp_path / "two", cache), "--stop-at", "3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

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
