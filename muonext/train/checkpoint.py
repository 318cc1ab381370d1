"""Atomic, verified training checkpoints: safetensors for tensors, JSON for the rest, never pickle.

A checkpoint is a directory `step_00000100/`:

    model.safetensors       the model's state dict (rank 0)
    dcp/                    instead, for a sharded (FSDP2) run: model and optimizer state written by
                            `torch.distributed.checkpoint`, every rank its shards; loadable at any world
                            size, one process included
    trainer.json            shared state: step, data position, config, ... (rank 0)
    rank00000.safetensors   per-rank tensors (optimizer state shard, RNG states)
    rank00000.json          per-rank structure (see `flat_state.py`)
    tokenizer.json, ...     extra files copied in
    manifest.json           {"format", "step", "world_size", "files": {name: {"bytes", "sha256"}}}, written last

Everything is written into `.tmp-step_.../` and renamed into place only when complete, so a process
killed mid-save leaves the previous checkpoint untouched (and a stale .tmp dir the next save removes).
Loading verifies every file against the manifest and names the file that is missing, truncated or corrupt.

DCP writes its `.metadata` file with pickle (torch's format, not ours): it is read only after its
sha256 matched the manifest, so load sharded checkpoints you (or your run) wrote, not untrusted ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .flat_state import flatten, unflatten

FORMAT = 1
MANIFEST = "manifest.json"
SHARDED = "dcp"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def py_rng_state(rng: random.Random) -> list:
    """A `random.Random` state as JSON (checkpoints hold no pickle)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_py_rng_state(rng: random.Random, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete, corrupt or does not fit; the message names the file."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def _rank_file(rank: int, ext: str) -> str:
    return f"rank{rank:05d}.{ext}"


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    *,
    model_state: dict[str, torch.Tensor] | None = None,
    sharded_state: dict[str, Any] | None = None,
    rank_state: dict[str, Any],
    shared: dict[str, Any],
    files: dict[str, str | os.PathLike] | None = None,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Write checkpoint `step` under `root` atomically; every rank calls it (`barrier` synchronises them).

    model_state (rank 0's is written) or sharded_state (a `torch.distributed.checkpoint` state dict,
    e.g. {"model": ..., "optim": ...} from `get_state_dict`; every rank writes its shards), rank_state
    (each rank's: nested tensors / JSON values), shared (rank 0's: JSON values), files (name -> source
    path, copied in by rank 0). Returns the final path.
    """
    if (model_state is None) == (sharded_state is None):
        raise ValueError("save_checkpoint: give exactly one of model_state and sharded_state")
    root = Path(root)
    name = checkpoint_name(step)
    final, tmp = root / name, root / f".tmp-{name}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    barrier()
    try:
        if sharded_state is not None:  # a collective: every rank writes its shards
            import torch.distributed as dist
            import torch.distributed.checkpoint as dcp

            with warnings.catch_warnings():  # one process writing a sharded checkpoint is what we mean
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                dcp.save(sharded_state, checkpoint_id=tmp / SHARDED, no_dist=not dist.is_initialized())
        tree, tensors = flatten(rank_state, "rank")
        save_file(tensors, tmp / _rank_file(rank, "safetensors"), metadata={"format": "pt"})
        _write_json(tmp / _rank_file(rank, "json"), tree)
        if rank == 0:
            if model_state is not None:
                weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model_state.items()}
                save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
            _write_json(tmp / "trainer.json", {"format": FORMAT, "step": step, "world_size": world_size,
                                               **shared})
            for fname, src in (files or {}).items():
                shutil.copyfile(src, tmp / fname)
    except BaseException:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    if rank == 0:
        try:
            _commit(tmp, final, step, world_size)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    barrier()
    return final


def _commit(tmp: Path, final: Path, step: int, world_size: int) -> None:
    entries = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        entries[path.relative_to(tmp).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    _write_json(tmp / MANIFEST, {"format": FORMAT, "step": step, "world_size": world_size, "files": entries})
    _fsync_dir(tmp)
    old = final.with_name(f".tmp-old-{final.name}")
    if final.exists():  # re-saving a step (e.g. after a resume): swap, then drop the old one
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def verify_checkpoint(path: str | os.PathLike) -> dict:
    """Check every file against the manifest; returns the manifest or raises CheckpointError."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{mpath}: missing — {path} is not a complete checkpoint")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{mpath}: unreadable manifest ({e})") from e
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{mpath}: checkpoint format {manifest.get('format')!r} is not {FORMAT}")
    for fname, entry in manifest["files"].items():
        fpath = path / fname
        if not fpath.is_file():
            raise CheckpointError(f"{fpath}: missing from the checkpoint")
        size = fpath.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(f"{fpath}: {size} bytes, the manifest says {entry['bytes']} (truncated?)")
        if _sha256(fpath) != entry["sha256"]:
            raise CheckpointError(f"{fpath}: sha256 does not match the manifest (corrupt file)")
    return manifest


@dataclass
class LoadedCheckpoint:
    path: Path
    step: int
    world_size: int
    shared: dict[str, Any]

    @property
    def sharded(self) -> bool:
        """Written by a sharded run: model and optimizer state are in dcp/ (`load_sharded`)."""
        return (self.path / SHARDED).is_dir()

    def model_state(self) -> dict[str, torch.Tensor]:
        if self.sharded:
            raise CheckpointError(f"{self.path}: a sharded checkpoint; its weights are in {SHARDED}/ "
                                  "(LoadedCheckpoint.load_sharded)")
        return _load_tensors(self.path / "model.safetensors")

    def load_sharded(self, state: dict[str, Any]) -> None:
        """Fills `state` (a `get_state_dict`-style dict of this run's layout, any world size) from dcp/."""
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        with warnings.catch_warnings():  # one process reading a sharded checkpoint is what we mean
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=self.path / SHARDED, no_dist=not dist.is_initialized())

    def rank_state(self, rank: int) -> dict[str, Any]:
        if not 0 <= rank < self.world_size:
            raise CheckpointError(f"{self.path}: has ranks 0..{self.world_size - 1}, asked for rank {rank}")
        tree = json.loads((self.path / _rank_file(rank, "json")).read_text())
        return unflatten(tree, _load_tensors(self.path / _rank_file(rank, "safetensors")))

    def file(self, name: str) -> Path | None:
        p = self.path / name
        return p if p.is_file() else None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e


def load_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Verify (sha256 of every file) and open a checkpoint directory."""
    path = Path(path)
    manifest = verify_checkpoint(path)
    shared = json.loads((path / "trainer.json").read_text())
    return LoadedCheckpoint(path, int(manifest["step"]), int(manifest["world_size"]), shared)


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints (a manifest exists) under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / MANIFEST).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def prune_checkpoints(root: str | os.PathLike, keep_last: int, keep_every: int = 0) -> list[Path]:
    """Delete all but the newest `keep_last` and those whose step is a multiple of `keep_every`."""
    found = list_checkpoints(root)
    keep = {p for _, p in found[-keep_last:]} if keep_last > 0 else set()
    removed = []
    for step, p in found:
        if p in keep or (keep_every > 0 and step % keep_every == 0):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed
