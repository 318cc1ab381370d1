"""muonext.train end to end on the `debug` preset (CPU, fp32): metrics, plots, checkpoints, bitwise resume,
export that transformers opens with the same logits, AdamW baseline, SFT from our own checkpoint."""

import json
import math

import pytest
import torch

from muonext.train import TrainConfig, Trainer, load_checkpoint, train
from muonext.train.runtime import setup_runtime


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tokcache"))


def cfg_for(out, cache, **kw):
    base = {"out": str(out), "cache_dir": cache, "max_corpus_bytes": 200_000, "tokenizer_train_bytes": 100_000,
            "progress": False, "max_steps": 8, "eval_every": 4, "sample_tokens": 8, "export": False,
            "plots": False, "device": "cpu"}
    return TrainConfig.from_preset("debug", **{**base, **kw})


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_debug_preset_end_to_end(tmp_path, cache, capsys):
    out = tmp_path / "run"
    result = train(cfg_for(out, cache, max_steps=12, eval_every=6, plots=True, save_every=6, keep_last=1,
                           keep_every=6))
    recs = metrics(out)
    assert [r["step"] for r in recs] == list(range(1, 13))
    for r in recs:
        for key in ("loss", "lr", "tokens_per_s", "grad_norm", "update_rms/attention", "update_rms/expert",
                    "update_rms/embedding", "weight_rms/head", "expert_load/max_over_mean"):
            assert key in r and math.isfinite(r[key]), (key, r)
    assert [r["step"] for r in recs if "val_loss" in r] == [6, 12]
    # Muon's matched update RMS: about 0.2 for the hidden matrices
    assert 0.1 < recs[-1]["update_rms/attention"] < 0.3, recs[-1]
    assert recs[-1]["loss"] < recs[0]["loss"] - 0.3, [r["loss"] for r in recs]
    assert result.val_loss == recs[-1]["val_loss"]
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["max_steps"] == 12 and "torch" in run["versions"] and "git_revision" in run
    for name in ("loss", "lr", "update_rms", "expert_load"):
        assert (out / f"{name}.png").stat().st_size > 1000
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert steps == ["step_00000006", "step_00000012"], steps  # last 1 + every 6th
    ck = load_checkpoint(out / "checkpoints" / "step_00000012")
    assert ck.step == 12 and ck.shared["loader"]["index"] > 0
    text = capsys.readouterr().out
    assert "final validation loss" in text and "sample:" in text
    assert (out / "sample.txt").read_text()


def test_loss_goes_down_on_a_fixed_batch(tmp_path, cache):
    data = tmp_path / "docs.jsonl"  # 4 training documents: at most one batch of rows, seen every step
    docs = [f"def f{i}(a, b):\n    return a * {i} + b - {i}\n" * 3 for i in range(5)]
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = cfg_for(tmp_path / "run", cache, data=str(data), vocab_size=300, max_steps=15, eval_every=0, lr=1e-2,
                  val_fraction=0.2, warmup_steps=1, seq_len=32)
    trainer = Trainer(cfg, setup_runtime("cpu"))
    assert len(trainer.data.train) <= cfg.batch_size
    trainer.run()
    losses = [r["loss"] for r in metrics(tmp_path / "run")]
    assert losses[-1] < 0.5 * losses[0], losses


def test_resume_is_bitwise_identical(tmp_path, cache):
    straight = tmp_path / "straight"
    train(cfg_for(straight, cache))
    split = tmp_path / "split"
    first = train(cfg_for(split, cache, stop_at=4))
    assert first.step == 4 and first.sample is None
    assert [r["step"] for r in metrics(split)] == [1, 2, 3, 4]
    train(cfg_for(split, cache, resume="auto"))
    a, b = metrics(straight), metrics(split)
    assert [r["step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a, b):
        for key in ("loss", "val_loss", "grad_norm", "lr", "update_rms/expert", "weight_rms/attention"):
            assert ra.get(key) == rb.get(key), (ra["step"], key, ra.get(key), rb.get(key))
    wa = load_checkpoint(straight / "checkpoints" / "step_00000008").model_state()
    wb = load_checkpoint(split / "checkpoints" / "step_00000008").model_state()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_export_opens_in_transformers_with_the_same_logits(tmp_path, cache):
    transformers = pytest.importorskip("transformers")
    trainer = Trainer(cfg_for(tmp_path / "run", cache, max_steps=3, export=True), setup_runtime("cpu"))
    trainer.run()
    export = tmp_path / "run" / "export"
    assert (export / "tokenizer.json").is_file()
    hf = transformers.DeepseekV3ForCausalLM.from_pretrained(export, attn_implementation="eager").eval()
    ids = trainer.data.val.ids[:2, :32]
    trainer.model.eval()
    with torch.no_grad():
        err = (hf(ids).logits - trainer.model(ids).logits).abs().max().item()
    assert err <= 1e-4, f"{err=}"
    # --init-from a transformers-format directory (its tokenizer.json comes along)
    again = Trainer(cfg_for(tmp_path / "again", cache, init_from=str(export), max_steps=1), setup_runtime("cpu"))
    assert again.data.tokenizer_path == tmp_path / "again" / "tokenizer.json"  # the run keeps its own copy
    assert again.data.tokenizer_path.read_bytes() == (export / "tokenizer.json").read_bytes()
    mine, theirs = trainer.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_adamw_baseline_logs_update_rms(tmp_path, cache):
    out = tmp_path / "adamw"
    train(cfg_for(out, cache, optimizer="adamw", max_steps=6, log_every=2, eval_every=0))
    recs = metrics(out)
    assert [r["step"] for r in recs] == [2, 4, 6]
    assert all(0 < r["update_rms/attention"] < 1 and "weight_rms/expert" in r for r in recs), recs
    assert recs[-1]["loss"] < recs[0]["loss"]


def test_sft_from_our_checkpoint(tmp_path, cache):
    base = tmp_path / "base"
    train(cfg_for(base, cache, max_steps=2))
    sft = tmp_path / "sft.jsonl"
    rows = [{"prompt": f"what is {i} + {i}?", "response": f"{2 * i}"} for i in range(20)]
    rows.append({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    sft.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "sft"
    trainer = Trainer(cfg_for(out, cache, sft=str(sft), init_from=str(base), max_steps=6, val_fraction=0.2),
                      setup_runtime("cpu"))
    base_weights = load_checkpoint(base / "checkpoints" / "step_00000002").model_state()
    assert torch.equal(trainer.model.state_dict()["model.embed_tokens.weight"],
                       base_weights["model.embed_tokens.weight"])
    trainer.run()
    recs = metrics(out)
    assert recs[-1]["loss"] < recs[0]["loss"] and "val_loss" in recs[-1]


def test_grad_accumulation_matches_one_big_batch(tmp_path, cache):
    big = tmp_path / "big"
    train(cfg_for(big, cache, max_steps=3, eval_every=0, ns_dtype="fp32"))
    acc = tmp_path / "acc"
    train(cfg_for(acc, cache, max_steps=3, eval_every=0, ns_dtype="fp32", batch_size=4, grad_accum=2))
    for a, b in zip(metrics(big), metrics(acc)):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), (a["step"], a["loss"], b["loss"])


def test_bf16_autocast_and_wsd_run(tmp_path, cache):
    out = tmp_path / "bf16"
    train(cfg_for(out, cache, precision="bf16", schedule="wsd", max_steps=4, plots=True))
    recs = metrics(out)
    assert all(math.isfinite(r["loss"]) for r in recs) and recs[-1]["lr"] < recs[1]["lr"]
    from muonext.train.plots import main as plots_main

    (out / "loss.png").unlink()
    plots_main([str(out)])  # python -m muonext.train.plots DIR
    assert (out / "loss.png").is_file()
