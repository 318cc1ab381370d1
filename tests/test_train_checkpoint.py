"""Checkpoints: no pickle (safetensors + JSON), exact round trip of optimizer state, sha256 verification
that names the bad file, atomic saves (a crash or kill mid-save leaves the previous one loadable), pruning."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from muonext.optim import Muon, muon_param_groups
from muonext.train import checkpoint as ckpt_mod
from muonext.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from muonext.train.flat_state import flatten, unflatten

ROOT = Path(__file__).resolve().parents[1]


def model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 6), torch.nn.Linear(6, 5), torch.nn.LayerNorm(5))
    opt = Muon(muon_param_groups(model), lr=0.01, ns_dtype=torch.float32)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    opt.step()
    return model, opt


def save(root, step, model, opt, **kw):
    return save_checkpoint(root, step, model_state=model.state_dict(),
                           rank_state={"optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state()}},
                           shared={"loader": {"epoch": 1, "index": 7}}, **kw)


def assert_same(a, b, path="sd"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (path, a.keys(), b.keys())
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b and type(a) is type(b), (path, a, b)


def test_flatten_round_trip_of_optimizer_state():
    model, opt = model_and_optimizer()
    sd = opt.state_dict()
    tree, tensors = flatten(sd)
    text = json.dumps(tree)  # plain JSON: nothing pickled
    assert_same(sd, unflatten(json.loads(text), tensors))
    adamw = torch.optim.AdamW(model.parameters())
    model(torch.tensor([[1, 2]])).sum().backward()
    adamw.step()
    tree, tensors = flatten(adamw.state_dict())
    assert_same(adamw.state_dict(), unflatten(json.loads(json.dumps(tree)), tensors))
    with pytest.raises(TypeError, match="without pickle"):
        flatten({"x": object()})


def test_save_load_round_trip(tmp_path):
    model, opt = model_and_optimizer()
    tok = tmp_path / "tokenizer.json"
    tok.write_text("{}")
    path = save(tmp_path / "ck", 5, model, opt, files={"tokenizer.json": tok})
    assert path.name == "step_00000005" and not list((tmp_path / "ck").glob(".tmp-*"))
    assert not [p for p in path.iterdir() if p.suffix in (".pt", ".pkl", ".bin")]
    ck = load_checkpoint(path)
    assert ck.step == 5 and ck.world_size == 1 and ck.shared["loader"] == {"epoch": 1, "index": 7}
    assert_same(model.state_dict(), ck.model_state())
    rank = ck.rank_state(0)
    assert_same(opt.state_dict(), rank["optimizer"])
    assert torch.equal(rank["rng"]["torch"], torch.get_rng_state())
    _, opt2 = model_and_optimizer()
    opt2.load_state_dict(rank["optimizer"])
    assert ck.file("tokenizer.json").read_text() == "{}"
    assert latest_checkpoint(tmp_path / "ck") == path


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "no_manifest"])
def test_damaged_checkpoint_is_refused_naming_the_file(tmp_path, damage):
    model, opt = model_and_optimizer()
    path = save(tmp_path, 1, model, opt)
    target = path / "rank00000.safetensors"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
        match = r"rank00000\.safetensors: \d+ bytes, the manifest says \d+ \(truncated\?\)"
    elif damage == "flip":
        target.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        match = r"rank00000\.safetensors: sha256 does not match"
    elif damage == "delete":
        target.unlink()
        match = r"rank00000\.safetensors: missing"
    else:
        (path / "manifest.json").unlink()
        match = r"manifest\.json: missing"
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_exception_during_save_keeps_previous(tmp_path, monkeypatch):
    model, opt = model_and_optimizer()
    first = save(tmp_path, 1, model, opt)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "_commit", boom)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, 2, model, opt)
    assert list_checkpoints(tmp_path) == [(1, first)]
    assert not list(tmp_path.glob(".tmp-*"))
    load_checkpoint(first)


def test_killed_during_save_keeps_previous(tmp_path):
    """A process that dies (os._exit) halfway through writing leaves the earlier checkpoint loadable."""
    script = textwrap.dedent(f"""
        import os, sys, torch
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_train_checkpoint import model_and_optimizer, save
        import safetensors.torch as st
        from muonext.train import checkpoint as ck
        model, opt = model_and_optimizer()
        save({str(tmp_path)!r}, 1, model, opt)
        real = st.save_file
        def dying(tensors, path, metadata=None):
            real(tensors, path, metadata=metadata)
            with open(path, "r+b") as f:   # the file is half written when the process dies
                f.truncate(os.path.getsize(path) // 2)
            os._exit(17)
        ck.save_file = dying
        save({str(tmp_path)!r}, 2, model, opt)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 17, proc.stderr
    assert list(tmp_path.glob(".tmp-step_00000002")), "the crash should leave a partial temporary dir"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert load_checkpoint(latest_checkpoint(tmp_path)).step == 1
    model, opt = model_and_optimizer()
    save(tmp_path, 3, model, opt)  # the next save cleans the stale temporary directory
    assert not list(tmp_path.glob(".tmp-*"))


def test_prune_keeps_last_and_every(tmp_path):
    model, opt = model_and_optimizer()
    for step in range(1, 8):
        save(tmp_path, step, model, opt)
    prune_checkpoints(tmp_path, keep_last=2, keep_every=3)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 6, 7]


def test_resave_same_step_replaces(tmp_path):
    model, opt = model_and_optimizer()
    save(tmp_path, 4, model, opt)
    with torch.no_grad():
        model[1].weight.add_(1)
    path = save(tmp_path, 4, model, opt)
    assert torch.equal(load_checkpoint(path).model_state()["1.weight"], model[1].weight)


def test_sharded_checkpoint_lives_inside_the_atomic_verified_one(tmp_path, monkeypatch):
    """A sharded run's DCP directory is written in the temporary directory, listed file by file in the
    manifest, refused when damaged, and a save that fails halfway leaves the previous checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model, opt = model_and_optimizer()

    def sharded_save(step):
        model_sd, optim_sd = get_state_dict(model, opt)
        return save_checkpoint(tmp_path, step, sharded_state={"model": model_sd, "optim": optim_sd},
                               rank_state={"rng": {"torch": torch.get_rng_state()}}, shared={"step_note": step})

    first = sharded_save(1)
    manifest = json.loads((first / "manifest.json").read_text())
    assert "dcp/.metadata" in manifest["files"] and "model.safetensors" not in manifest["files"]
    fresh, fresh_opt = model_and_optimizer()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    model_sd, optim_sd = get_state_dict(fresh, fresh_opt)
    state = {"model": model_sd, "optim": optim_sd}
    ck = load_checkpoint(first)
    assert ck.sharded
    with pytest.raises(CheckpointError, match="sharded checkpoint"):
        ck.model_state()
    ck.load_sharded(state)
    set_state_dict(fresh, fresh_opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    assert_same(fresh.state_dict(), model.state_dict())
    assert_same(fresh_opt.state_dict()["state"], opt.state_dict()["state"])

    real = dcp.save

    def half_then_fail(state_dict, checkpoint_id, **kw):
        real(state_dict, checkpoint_id=checkpoint_id, **kw)
        raise OSError("disk full")

    monkeypatch.setattr(dcp, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        sharded_save(2)
    assert list_checkpoints(tmp_path) == [(1, first)] and not list(tmp_path.glob(".tmp-*"))
    monkeypatch.undo()

    shard = next(p for p in (first / "dcp").iterdir() if p.suffix == ".distcp")
    data = shard.read_bytes()
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # one flipped byte
    with pytest.raises(CheckpointError, match=shard.name):
        load_checkpoint(first)
