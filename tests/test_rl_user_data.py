"""k1.5 RL on the user's own model and tasks: the chain train_moonlight.py → export → train_rl.py
(--init-from, --sft, --tasks with weights) runs every stage; task files are checked row by row; file
weights set the mix; rows without a difficulty get one from measured pass rates."""

from __future__ import annotations

import json

import pytest
import torch

from muonext.rl.sampling import ProblemSampler
from muonext.rl.user_tasks import CodeRowTask, MathRowTask, load_tasks, measure_difficulty, parse_task_spec

pytestmark = pytest.mark.usefixtures("one_thread")


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_the_chain_from_a_trained_model_to_rl_on_the_users_tasks(tmp_path):
    import sys
    from pathlib import Path

    from muonext.train import TrainConfig, train

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from train_rl import main

    run = train(
        TrainConfig.from_preset(
            "debug",
            out=str(tmp_path / "lm"),
            cache_dir=str(tmp_path / "cache"),
            max_corpus_bytes=200_000,
            tokenizer_train_bytes=100_000,
            max_steps=3,
            progress=False,
            plots=False,
            sample_tokens=0,
        )
    )
    export = run.out / "export"
    math_file = _write(
        tmp_path / "math.jsonl",
        [
            {"prompt": f"What is {a} + {a}?", "answer": 2 * a, **({"difficulty": 1} if a % 2 else {})}
            for a in range(1, 9)
        ],
    )
    code_file = _write(
        tmp_path / "code.jsonl",
        [
            {"prompt": "Read two numbers and print their sum.", "tests": [{"input": "1 2\n", "output": "3"}]},
            {"prompt": "Write add(a, b).", "entry_point": "add", "tests": [{"args": [1, 2], "expected": 3}]},
            {"prompt": "Write double(x).", "tests": "assert double(2) == 4\n", "difficulty": 1},
        ],
    )
    held = _write(
        tmp_path / "held.jsonl",
        [
            {"prompt": "What is 9 + 9?", "answer": "18", "difficulty": 1},
            {"prompt": "Write triple(x).", "tests": "assert triple(1) == 3\n"},
        ],
    )
    sft = _write(
        tmp_path / "sft.jsonl",
        [{"prompt": f"What is {a} + {a}?", "response": f"The answer is {2 * a}."} for a in range(1, 5)],
    )
    out = tmp_path / "rl"
    main(
        [
            "--preset",
            "debug",
            "--init-from",
            str(export),
            "--sft",
            sft,
            "--tasks",
            math_file,
            "--tasks",
            f"{code_file}:0.5",
            "--eval-tasks",
            held,
            "--out",
            str(out),
            "--no-progress",
            "--sft-steps",
            "2",
            "--rl-iterations",
            "2",
        ]
    )
    for stage in ("sft", "rl", "short_sft", "merge", "shortest_sft", "dpo", "l2s_rl", "eval"):
        assert (out / stage / "done.json").exists(), stage
    assert json.loads((out / "short_sft" / "done.json").read_text())["skipped"]  # no short demonstrations
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["stage"] == "rl"] == [0, 1]
    assert any(r["stage"] == "sft" for r in rows)
    for png in ("rl.png", "sft_loss.png", "eval.png"):
        assert (out / "plots" / png).stat().st_size > 1000, png
    results = json.loads((out / "eval" / "results.json").read_text())
    assert set(results) >= {"sft", "rl", "dpo", "l2s_rl"} and results["rl"]["all"]["n"] == 2
    measured = json.loads((out / "difficulty.json").read_text())
    assert len(measured["pass_rates"]) == 6  # four math rows and two code rows came without a difficulty
    data = json.loads((out / "run.json").read_text())["data"]
    assert data["init_from"] == str(export) and data["n_train"] == 11


@pytest.mark.parametrize(
    "row,message",
    [
        ("not json", "not valid JSON"),
        ({"answer": "1"}, "field 'prompt'"),
        ({"prompt": "p", "answer": "one"}, "field 'answer'"),
        ({"prompt": "p", "answer": "1", "difficulty": 0}, "field 'difficulty'"),
        ({"prompt": "p"}, "a row needs 'answer'"),
        ({"prompt": "p", "tests": [{"input": 1, "output": "2"}]}, "field 'tests[0]'"),
        ({"prompt": "p", "entry_point": "f", "tests": [{"args": [1]}]}, "field 'tests[0]'"),
        ({"prompt": "p", "tests": "y = 2\nassert f() == y\n"}, "field 'tests'"),
    ],
)
def test_bad_rows_are_refused_with_file_line_and_field(tmp_path, row, message):
    path = _write(tmp_path / "tasks.jsonl", [{"prompt": "ok", "answer": "1"}, row])
    with pytest.raises(ValueError) as err:
        load_tasks([path])
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value), str(err.value)


def test_file_weights_set_the_mix(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"prompt": f"a{i}", "answer": "1"} for i in range(3)])
    b = _write(tmp_path / "b.jsonl", [{"prompt": f"b{i}", "answer": "1"} for i in range(9)])
    assert parse_task_spec(f"{a}:3") == (a, 3.0) and parse_task_spec(a) == (a, 1.0)
    tasks = load_tasks([f"{a}:3", b])
    sampler = ProblemSampler([1] * len(tasks), strategy="uniform", mix=[t.weight for t in tasks], seed=0)
    drawn = sampler.sample(8000, 0, replacement=True)
    share_a = sum(tasks[i].prompt.startswith("a") for i in drawn) / len(drawn)
    assert abs(share_a - 0.75) < 0.03, share_a  # 3 : 1 although file a has a third of b's rows


def test_unknown_difficulty_comes_from_the_pass_rate():
    tasks = [
        MathRowTask("p", "1"),
        MathRowTask("q", "1", difficulty=2),
        CodeRowTask("r", {"tests": "assert 1\n"}),
        MathRowTask("s", "1"),
    ]
    levels = [t.difficulty for t in measure_difficulty(tasks, [0.9, 0.0, 0.5, 0.1])]
    assert levels == [1, 2, 2, 3]  # a given difficulty is kept


def test_tokenizer_codec_renders_prompts_as_sft_does(tmp_path):
    from muonext.data.sft import render
    from muonext.data.tokenizer import train_bpe
    from muonext.rl.text_codec import TokenizerCodec

    tok = train_bpe(["What is 1 + 1? The answer is 2."] * 50, 300)
    tok.save(str(tmp_path / "tokenizer.json"))
    codec = TokenizerCodec(str(tmp_path / "tokenizer.json"))
    prompt, _ = render({"prompt": "What is 1 + 1?", "response": "2"})
    assert codec.prompt_ids("What is 1 + 1?") == codec.encode(prompt)
    ids = codec.response_ids("The answer is 2.")
    assert ids[-1] == codec.eos_id and codec.decode(ids + [5, 6]) == "The answer is 2."
    assert torch.tensor(ids).max() < codec.vocab_size
