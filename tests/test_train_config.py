"""TrainConfig validation (messages name the field), the generated CLI, and the lr schedules."""

import dataclasses
import itertools
import math

import pytest

from muonext.train import PRESETS, TrainConfig, parse_config
from muonext.train.cli import build_parser
from muonext.train.schedule import lr_factor


@pytest.mark.parametrize("field,value,why", [
    ("lr", 0.0, "must be a finite number > 0"),
    ("lr", float("nan"), "must be a finite number > 0"),
    ("batch_size", 0, "must be > 0"),
    ("optimizer", "sgd", "must be one of"),
    ("precision", "fp16", "must be one of"),
    ("schedule", "linear", "must be one of"),
    ("model", "huge", "must be a MoonlightConfig preset"),
    ("betas", (0.9, 1.5), "must be two numbers in"),
    ("val_fraction", 1.0, r"must be in \(0, 1\)"),
    ("stop_at", 99, "must be in"),
    ("data", "/no/such/corpus.txt", "names a path that does not exist"),
    ("tokenizer", "/no/such/tokenizer.json", "names a path that does not exist"),
    ("resume", "/no/such/checkpoint", "must be 'auto' or an existing checkpoint directory"),
    ("max_steps", "10", "must be of type int"),
    ("export", 1, "must be of type bool"),
    ("vocab_size", 100, "must be >= 300"),
    ("device", "tpu", "must be auto, cpu, cuda or cuda:N"),
    ("qk_clip", -1.0, "must be a finite number >= 0"),
    ("qk_clip", float("inf"), "must be a finite number >= 0"),
])
def test_validation_names_the_field(field, value, why):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field} {why}"):
        TrainConfig.from_preset("debug", **{field: value})


def test_presets_are_valid_and_distinct():
    for name in PRESETS:
        cfg = TrainConfig.from_preset(name)
        assert cfg.preset == name and cfg.model == PRESETS[name]["model"]
    assert TrainConfig.from_preset("tiny").max_steps > TrainConfig.from_preset("debug").max_steps
    with pytest.raises(ValueError, match="TrainConfig.preset"):
        TrainConfig.from_preset("nope")
    with pytest.raises(ValueError, match="no field"):
        TrainConfig.from_preset("debug", learning_rate=1.0)


def test_cli_maps_flags_to_fields(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("hello\n")
    cfg = parse_config(["--preset", "tiny", "--out", str(tmp_path / "o"), "--max-steps", "7", "--lr", "0.01",
                        "--optimizer", "adamw", "--seed", "3", "--data", str(data), "--resume", "auto",
                        "--no-export", "--betas", "0.8", "0.9", "--max-corpus-bytes", "none",
                        "--schedule", "wsd"])
    assert cfg.preset == "tiny" and cfg.model == "tiny" and cfg.out == str(tmp_path / "o")
    assert (cfg.max_steps, cfg.lr, cfg.optimizer, cfg.seed) == (7, 0.01, "adamw", 3)
    assert cfg.data == str(data) and cfg.resume == "auto" and cfg.export is False
    assert cfg.betas == (0.8, 0.9) and cfg.max_corpus_bytes is None and cfg.schedule == "wsd"
    assert cfg.seq_len == PRESETS["tiny"]["seq_len"]  # untouched fields keep the preset's value


def test_every_field_has_a_flag():
    parser = build_parser()
    flags = {a.dest for a in parser._actions}
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= flags
    for flag in ("--preset", "--out", "--max-steps", "--optimizer", "--lr", "--seed", "--data", "--tokenizer",
                 "--resume", "--sft", "--init-from"):
        assert flag in parser._option_string_actions, flag


@pytest.mark.parametrize("argv,field", [
    (["--lr", "-1"], "lr"),
    (["--max-steps", "ten"], "max_steps"),
    (["--sft", "/no/such.jsonl"], "sft"),
    (["--qk-clip", "-5"], "qk_clip"),
])
def test_cli_errors_name_the_field(argv, field, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(argv)
    assert exc.value.code == 2
    assert f"TrainConfig.{field}" in capsys.readouterr().err


def test_schedules():
    f = [lr_factor(s, 100, 10, "cosine", 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[9:]))
    assert f[-1] == pytest.approx(0.1, abs=1e-3)
    w = [lr_factor(s, 100, 10, "wsd", 0.0, decay_fraction=0.2) for s in range(100)]
    assert w[9:80] == [1.0] * 71 and w[-1] == pytest.approx(0.0) and w[90] == pytest.approx(0.45)
    assert all(math.isfinite(lr_factor(s, 5, 10)) for s in range(5))  # warm-up longer than the run
