"""Data: the embedded default corpus (and, with the training pipeline, tokenizers and loaders)."""

from .corpus import read_stdlib_corpus, stdlib_source_files

__all__ = ["read_stdlib_corpus", "stdlib_source_files"]
