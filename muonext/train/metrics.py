"""Run records: run.json (config, git revision, library versions), metrics.jsonl (one object per logged
step), TensorBoard when installed, and per-parameter-kind statistics (weight RMS, update RMS).

Parameter kinds (by name, see models/moonlight.py): embedding, head, norm, router, attention, expert
(routed, 3-D), shared (shared experts), dense (MLP of the dense layers).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from ..parallel.norms import squared_sums

KINDS = ("embedding", "head", "norm", "router", "attention", "expert", "shared", "dense", "other")


def param_kind(name: str) -> str:
    if "embed_tokens" in name:
        return "embedding"
    if name.startswith("lm_head"):
        return "head"
    if "norm" in name:
        return "norm"
    if ".mlp.gate." in name:
        return "router"
    if ".self_attn." in name:
        return "attention"
    if ".mlp.experts." in name:
        return "expert"
    if ".mlp.shared_experts." in name:
        return "shared"
    if ".mlp." in name:
        return "dense"
    return "other"


@torch.no_grad()
def weight_rms_by_kind(model: torch.nn.Module) -> dict[str, float]:
    """RMS over all elements of each kind's parameters (whole tensors when sharded: one all_reduce)."""
    names, params = zip(*model.named_parameters())
    sq, n = defaultdict(float), defaultdict(int)
    for name, p, s in zip(names, params, squared_sums([p.detach() for p in params]).tolist()):
        k = param_kind(name)
        sq[k] += s
        n[k] += p.numel()
    return {f"weight_rms/{k}": math.sqrt(sq[k] / n[k]) for k in sq}


def update_rms_by_kind(rms: dict[str, float], numels: dict[str, int]) -> dict[str, float]:
    """Element-weighted RMS per kind from per-parameter update RMS values (lr-free)."""
    sq, n = defaultdict(float), defaultdict(int)
    for name, r in rms.items():
        k = param_kind(name)
        sq[k] += r * r * numels[name]
        n[k] += numels[name]
    return {f"update_rms/{k}": math.sqrt(sq[k] / n[k]) for k in sq if n[k]}


def git_revision(cwd: str | os.PathLike | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or os.path.dirname(__file__),
                             capture_output=True, text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd or os.path.dirname(__file__), capture_output=True, text=True, timeout=5,
                               check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("muonext", "numpy", "safetensors", "tokenizers", "transformers"):
        m = sys.modules.get(mod)
        if m is None:
            try:
                m = __import__(mod)
            except ImportError:
                continue
        versions[mod] = str(getattr(m, "__version__", "?"))
    return versions


class MetricsLogger:
    """Writes run.json and metrics.jsonl in `out` (only where `enabled`, i.e. on rank 0)."""

    def __init__(self, out: str | os.PathLike, enabled: bool = True, resume_step: int | None = None,
                 tensorboard: bool = True):
        self.out, self.enabled = Path(out), enabled
        self.path = self.out / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()  # a fresh run in an old directory starts a fresh log
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package
            except ImportError:
                pass
            else:
                self._tb = SummaryWriter(str(self.out / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        """Drop the lines of steps after `step` (logged by the run that stopped before saving them)."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def header(self, config: dict[str, Any], **extra: Any) -> None:
        if not self.enabled:
            return
        run = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_revision": git_revision(),
               "versions": library_versions(), "argv": sys.argv, "config": config, **extra}
        (self.out / "run.json").write_text(json.dumps(run, indent=1, default=str) + "\n")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(out: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(out) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
