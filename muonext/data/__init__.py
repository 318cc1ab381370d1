"""Data: the embedded default corpus, text sources, the byte-level BPE tokenizer, packed rows with a
resumable loader, and SFT rows (loss on responses only).

The tokenizer (`muonext.data.tokenizer`, needs the `tokenizers` package) is imported on its own so that
`import muonext.data` works without it."""

from .corpus import read_stdlib_corpus, stdlib_source_files
from .loader import Loader, PackedRows, eval_batches, shard_rows, tokenize_documents
from .sft import SFTRows, read_sft_jsonl, split_examples
from .sources import CorpusError, load_split

__all__ = [
    "CorpusError",
    "Loader",
    "PackedRows",
    "SFTRows",
    "eval_batches",
    "load_split",
    "read_sft_jsonl",
    "read_stdlib_corpus",
    "shard_rows",
    "split_examples",
    "stdlib_source_files",
    "tokenize_documents",
]
