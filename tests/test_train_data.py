"""Training data: sources and their train/validation split, clear errors for empty or malformed corpora,
the BPE tokenizer and its cache, packed rows, the resumable loader, and SFT masking (−100 on prompts)."""

import json

import pytest
import torch

from muonext.data.loader import Loader, PackedRows, eval_batches, shard_rows, tokenize_documents
from muonext.data.sft import IGNORE, SFTRows, encode_example, read_sft_jsonl, render, split_examples
from muonext.data.sources import CorpusError, load_split
from muonext.data.tokenizer import EOS, eos_id, get_tokenizer, train_bpe

TEXT = "def square(x):\n    return x * x\n\nclass Point:\n    pass\n" * 20


@pytest.fixture(scope="module")
def tok():
    return train_bpe([TEXT, "What is two plus two? Four. Hello there!"], 320)


def test_stdlib_default_split_by_file():
    train, val = load_split(None, 300_000, 0.1)
    assert len(train) >= 9 * len(val) - 9 and val
    again = load_split(None, 300_000, 0.1)
    assert again == (train, val)  # deterministic order
    assert not set(train) & set(val)


def test_folder_jsonl_and_text_sources(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(10):
        (folder / f"{i:02d}.txt").write_text(f"document {i}\n")
    train, val = load_split(str(folder), None, 0.2)
    assert val == ["document 4\n", "document 9\n"] and len(train) == 8
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(4)))
    assert load_split(str(jsonl), None, 0.5) == (["row 0", "row 2"], ["row 1", "row 3"])
    single = tmp_path / "one.txt"
    single.write_text("".join(f"line {i}\n" for i in range(100)))
    train, val = load_split(str(single), None, 0.1)
    assert train[0] + val[0] == single.read_text()


def test_empty_or_malformed_corpus_fails_clearly(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorpusError, match="is empty"):
        load_split(str(empty), None, 0.1)
    (tmp_path / "blank.txt").write_text("")
    with pytest.raises(CorpusError, match="is empty"):
        load_split(str(tmp_path / "blank.txt"), None, 0.1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: .*'text'"):
        load_split(str(bad), None, 0.1)


def test_tokenizer_is_cached_by_content(tmp_path):
    docs = [TEXT]
    t1, p1 = get_tokenizer(docs, 300, 10_000, tmp_path)
    mtime = p1.stat().st_mtime_ns
    _, p2 = get_tokenizer(docs, 300, 10_000, tmp_path)
    assert p1 == p2 and p2.stat().st_mtime_ns == mtime
    _, p3 = get_tokenizer(docs, 310, 10_000, tmp_path)
    assert p3 != p1
    assert eos_id(t1) == t1.token_to_id(EOS) == 0
    assert t1.decode(t1.encode("x = square(3)").ids) == "x = square(3)"


def test_packed_rows_and_loader_resume(tok):
    rows = PackedRows(tokenize_documents(tok, [TEXT] * 4), eos_id(tok), 16)
    assert rows.ids.shape[1] == 16 and (rows.ids == 0).sum() >= 3  # EOS separators
    loader = Loader(rows, 5, seed=1)
    for _ in range(7):
        loader.next_batch()
    state = loader.state_dict()
    assert state == {"epoch": state["epoch"], "index": state["index"]} and all(
        type(v) is int for v in state.values())
    expect = [loader.next_batch()[0] for _ in range(5)]
    again = Loader(rows, 5, seed=1)
    again.load_state_dict(json.loads(json.dumps(state)))
    assert all(torch.equal(a, again.next_batch()[0]) for a in expect)
    other_seed = Loader(rows, 5, seed=2)
    assert not torch.equal(other_seed.next_batch()[0], Loader(rows, 5, seed=1).next_batch()[0])
    batch = torch.arange(8).view(8, 1)
    assert shard_rows(batch, 1, 2).flatten().tolist() == [1, 3, 5, 7]
    assert len(eval_batches(rows, 4, 2)) == 2


def test_sft_masks_prompt_tokens(tok):
    prompt, response = render({"prompt": "What is two plus two?", "response": "Four."})
    ids, labels = encode_example(tok, prompt, response, eos_id(tok))
    n_prompt = len(tok.encode(prompt).ids)
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == eos_id(tok)
    assert tok.decode(ids[n_prompt:-1]) == "Four."
    rows = SFTRows(tok, [(prompt, response)], eos_id(tok), tok.token_to_id("<|pad|>"), 64)
    lab = rows.labels[0]
    assert (lab[:n_prompt] == IGNORE).all() and (lab[len(ids):] == IGNORE).all()
    assert lab[n_prompt:len(ids)].tolist() == ids[n_prompt:]


def test_sft_messages_and_truncation(tmp_path, tok):
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
                          {"role": "assistant", "content": "Hello there!"}]},
            {"prompt": "x" * 400, "response": "never seen"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = read_sft_jsonl(path)
    assert examples[0][0] == "<|system|>\nBe brief.\n<|user|>\nHello\n<|assistant|>\n"
    assert examples[0][1] == "Hello there!"
    sft = SFTRows(tok, examples, eos_id(tok), eos_id(tok), 32)
    assert len(sft) == 1 and sft.dropped == 1  # the prompt of the second fills the row
    with pytest.raises(CorpusError, match="last message must have role 'assistant'"):
        render({"messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(CorpusError, match="'prompt' and 'response'"):
        render({"prompt": "only"})
    train, val = split_examples(list(range(10)), 0.2)
    assert val == [4, 9] and len(train) == 8
