"""The default corpus every machine has: the Python standard library's own source files.

Deterministic: files in sorted relative-path order, so a seed gives the same data everywhere the same
Python version is installed. Nothing is downloaded.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path


def stdlib_source_files(root: str | Path | None = None) -> list[Path]:
    """Every .py file of the standard library (site-packages excluded), in sorted order."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    files = [p for p in base.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts]
    return sorted(files, key=lambda p: p.relative_to(base).as_posix())


def read_stdlib_corpus(max_bytes: int | None = None, root: str | Path | None = None) -> bytes:
    """The concatenated source (files separated by a NUL byte), at most max_bytes long."""
    chunks, total = [], 0
    for path in stdlib_source_files(root):
        try:
            data = path.read_bytes()
        except OSError:
            continue  # unreadable files are skipped, not fatal
        chunks.append(data + b"\0")
        total += len(data) + 1
        if max_bytes is not None and total >= max_bytes:
            break
    corpus = b"".join(chunks)[:max_bytes]
    if not corpus:
        raise FileNotFoundError(
            f"the standard-library corpus is empty: no readable .py files under {root or sysconfig.get_paths()['stdlib']}"
        )
    return corpus
