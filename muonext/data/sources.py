"""Text sources for pre-training: the standard library (default), a text file, a folder, or JSONL.

Every source yields documents in a deterministic order and is split into train / validation *by
document* (a file of the stdlib or a folder, a line of a JSONL): document i is held out when
`i % k == k - 1`, k = round(1 / val_fraction). A single text file is one document: its last
`val_fraction` (at a line boundary) is held out instead. Empty or unreadable corpora fail clearly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from .corpus import stdlib_source_files


class CorpusError(ValueError):
    """The corpus is empty, unreadable or malformed; the message names the path."""


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def iter_documents(data: str | None) -> Iterator[str]:
    """Documents of a source: None = stdlib .py files; a .jsonl ("text" field); a text file; a folder."""
    if data is None:
        for path in stdlib_source_files():
            text = _read_text(path)
            if text:
                yield text
        return
    path = Path(data)
    if path.is_dir():
        files = sorted((p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")),
                       key=lambda p: p.relative_to(path).as_posix())
        for p in files:
            text = _read_text(p)
            if text:
                yield text
        return
    if not path.is_file():
        raise CorpusError(f"data path {path} is neither a file nor a folder")
    if path.suffix == ".jsonl":
        yield from _jsonl_texts(path)
        return
    text = _read_text(path)
    if text is None:
        raise CorpusError(f"{path}: cannot be read")
    if text:
        yield text


def read_jsonl_objects(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a line that is not a JSON object fails naming it."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise CorpusError(f"{path}:{lineno}: not valid JSON ({e})") from e
            if not isinstance(row, dict):
                raise CorpusError(f"{path}:{lineno}: each line must be a JSON object")
            yield lineno, row


def _jsonl_texts(path: Path) -> Iterator[str]:
    for lineno, row in read_jsonl_objects(path):
        if not isinstance(row.get("text"), str):
            raise CorpusError(f"{path}:{lineno}: each line must be an object with a string 'text' field")
        if row["text"]:
            yield row["text"]


def load_split(data: str | None, max_bytes: int | None, val_fraction: float) -> tuple[list[str], list[str]]:
    """(train documents, validation documents), reading at most about `max_bytes` of text."""
    docs, total = [], 0
    for doc in iter_documents(data):
        docs.append(doc)
        total += len(doc)
        if max_bytes is not None and total >= max_bytes:
            break
    where = "the Python standard library" if data is None else data
    if not docs or not any(d.strip() for d in docs):
        raise CorpusError(f"the corpus at {where} is empty: no readable text found")
    if len(docs) == 1:
        text = docs[0]
        cut = text.rfind("\n", 0, int(len(text) * (1 - val_fraction)))
        cut = cut if cut > 0 else int(len(text) * (1 - val_fraction))
        train, val = [text[:cut]], [text[cut:]]
    else:
        k = max(2, round(1 / val_fraction))
        train = [d for i, d in enumerate(docs) if i % k != k - 1]
        val = [d for i, d in enumerate(docs) if i % k == k - 1] or [train.pop()]
    if not any(d.strip() for d in train) or not any(d.strip() for d in val):
        raise CorpusError(f"the corpus at {where} is too small to split into train and validation text")
    return train, val


def corpus_size(docs: list[str]) -> int:
    return sum(len(d) for d in docs)


def fingerprint_source(data: str | None) -> str:
    """A short description of the source for the run header."""
    return "stdlib" if data is None else os.path.abspath(data)
