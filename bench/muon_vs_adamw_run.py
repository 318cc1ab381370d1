"""One training run of bench/muon_vs_adamw.py, driven through the library's Trainer.

`run(spec)` builds `muonext.train.Trainer` from a `TrainConfig` (preset + overrides), optionally switches
Muon's `adjust_lr` on its param groups, then steps it with `Trainer.train_step` / `Trainer.evaluate` and
records what the trainer does not log:

* per matrix shape (rows, cols) of the Muon-routed hidden matrices: RMS of the lr-free update
  (Muon: `Muon.update_rms`; AdamW: recovered from the weight change, p0·(1 − lr·wd) − p = lr·u);
* at every evaluation: RMS of each decoder layer's output (forward hooks, on the held-out batches) and
  weight RMS per parameter kind;
* at step 0 and at the end: normalised SVD entropy of every weight matrix per kind (routed experts per
  expert), H = −Σ pᵢ log pᵢ / log n, pᵢ = σᵢ² / Σσ².

The result is a JSON-able dict (also written to `<out>/bench.json`); metrics.jsonl/run.json are the
trainer's own logger.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path

import torch

from muonext.optim import Muon, matrix_shape
from muonext.train.config import TrainConfig
from muonext.train.metrics import param_kind, weight_rms_by_kind
from muonext.train.runtime import setup_runtime
from muonext.train.trainer import Trainer

HIDDEN_KINDS = ("attention", "dense", "expert", "shared", "router")


def svd_entropy(w_AB: torch.Tensor) -> float:
    """Normalised SVD entropy of one matrix, in [0, 1] (1: all singular values equal)."""
    s = torch.linalg.svdvals(w_AB.double())
    p = s.pow(2) / s.pow(2).sum()
    p = p[p > 0]
    n = min(w_AB.shape)
    return float(-(p * p.log()).sum() / math.log(n)) if n > 1 else 1.0


@torch.no_grad()
def svd_entropies(model: torch.nn.Module) -> dict[str, list[float]]:
    """Kind -> entropies of its matrices (a 3-D expert stack counts as E matrices)."""
    out: dict[str, list[float]] = defaultdict(list)
    for name, p in model.named_parameters():
        kind = param_kind(name)
        if kind not in HIDDEN_KINDS or p.dim() < 2:
            continue
        mats = p.detach().reshape(-1, *p.shape[-2:]) if p.dim() == 3 else p.detach().reshape(p.shape[0], -1)[None]
        out[kind] += [svd_entropy(m) for m in mats]
    return dict(out)


class LayerOutputRMS:
    """Forward hooks on the decoder layers: sum of squares and count of each layer's output while armed."""

    def __init__(self, model) -> None:
        self.layers = list(model.model.layers)
        self.armed = False
        self.sq = [0.0] * len(self.layers)
        self.n = [0] * len(self.layers)
        self.handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]

    def _hook(self, i: int):
        def hook(_module, _inputs, output):
            if self.armed:
                h = output[0].detach().float()
                self.sq[i] += float(h.pow(2).sum())
                self.n[i] += h.numel()
        return hook

    def start(self) -> None:
        self.armed, self.sq, self.n = True, [0.0] * len(self.layers), [0] * len(self.layers)

    def stop(self) -> list[float]:
        self.armed = False
        return [math.sqrt(s / max(n, 1)) for s, n in zip(self.sq, self.n)]


def _hidden_matrices(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if param_kind(n) in HIDDEN_KINDS and p.dim() >= 2}


def _shape_key(p: torch.Tensor) -> str:
    _, rows, cols = matrix_shape(p.shape)
    return f"{rows}x{cols}"


def run(spec: dict) -> dict:
    """spec: tag, preset, overrides (TrainConfig fields), adjust_lr (None = library default), threads,
    log_every, warmup_skip (steps left out of the update-RMS means)."""
    torch.set_num_threads(spec.get("threads", 1))
    t_start = time.perf_counter()
    cfg = TrainConfig.from_preset(spec["preset"], **spec["overrides"])
    tr = Trainer(cfg, setup_runtime("cpu"))
    if spec.get("adjust_lr") is not None:
        if not isinstance(tr.optimizer, Muon):
            raise ValueError(f"{spec['tag']}: adjust_lr is a Muon setting, optimizer is {cfg.optimizer}")
        for g in tr.optimizer.param_groups:
            g["adjust_lr"] = spec["adjust_lr"]
    model = tr.model
    tr.logger.header(cfg.to_dict(), bench_spec=spec, parameters=model.num_parameters(),
                     train_tokens=tr.data.train.num_tokens, val_tokens=tr.data.val.num_tokens)
    hidden = _hidden_matrices(model)
    shapes = {n: _shape_key(p) for n, p in hidden.items()}
    kinds_of_shape: dict[str, set] = defaultdict(set)
    for n, s in shapes.items():
        kinds_of_shape[s].add(param_kind(n))
    hooks = LayerOutputRMS(model)
    entropy_init = svd_entropies(model)

    def evaluate() -> dict:
        hooks.start()
        val = tr.evaluate()
        layer_rms = hooks.stop()
        wr = weight_rms_by_kind(model)
        sq = sum(float(p.detach().pow(2).sum()) for p in hidden.values())
        n = sum(p.numel() for p in hidden.values())
        return {"step": tr.step, "tokens": tr.tokens_seen, "val_loss": val, "layer_out_rms": layer_rms,
                "weight_rms": {k.split("/", 1)[1]: v for k, v in wr.items()},
                "weight_rms_hidden": math.sqrt(sq / n)}

    evals = [evaluate()]
    train_curve = []
    upd_sq: dict[str, float] = defaultdict(float)  # per shape: Σ over logged steps of numel-weighted rms²
    upd_n: dict[str, float] = defaultdict(float)
    is_muon = isinstance(tr.optimizer, Muon)
    wd = cfg.weight_decay
    log_every, skip = spec.get("log_every", 10), spec.get("warmup_skip", cfg.warmup_steps)
    model.train()
    t_train = time.perf_counter()
    while tr.step < cfg.max_steps:
        step = tr.step + 1
        logging = step % log_every == 0 or step == cfg.max_steps
        before = {n: p.detach().clone() for n, p in hidden.items()} if logging and not is_muon else None
        rec = tr.train_step(detailed=logging)
        if logging:
            if is_muon:
                rms = {n: r for n, r in tr.optimizer.update_rms.items() if n in shapes}
            else:
                lr = rec["lr"]
                rms = {n: float(((before[n] * (1 - lr * wd) - p.detach()) / lr).pow(2).mean().sqrt())
                       for n, p in hidden.items()}
            rec["update_rms_by_shape"] = _by_shape(rms, shapes, hidden)
            if step > skip:
                for n, r in rms.items():
                    upd_sq[shapes[n]] += r * r * hidden[n].numel()
                    upd_n[shapes[n]] += hidden[n].numel()
            train_curve.append({"step": step, "tokens": tr.tokens_seen, "loss": rec["loss"]})
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps:
            ev = evaluate()  # Trainer.evaluate switches to eval mode and back
            rec["val_loss"] = ev["val_loss"]
            rec["layer_out_rms"] = ev["layer_out_rms"]
            evals.append(ev)
        if logging:
            tr.logger.log(rec)
    train_s = time.perf_counter() - t_train
    tr.logger.close()
    result = {
        "spec": spec, "tokens_per_step": cfg.tokens_per_step, "max_steps": cfg.max_steps,
        "parameters": model.num_parameters(), "final_val_loss": evals[-1]["val_loss"], "evals": evals,
        "train_curve": train_curve,
        "update_rms_by_shape": {s: math.sqrt(upd_sq[s] / upd_n[s]) for s in upd_sq},
        "kinds_of_shape": {s: sorted(k) for s, k in kinds_of_shape.items()},
        "numel_of_shape": {s: sum(hidden[n].numel() for n in shapes if shapes[n] == s) for s in kinds_of_shape},
        "svd_entropy_init": entropy_init, "svd_entropy_final": svd_entropies(model),
        "train_seconds": train_s, "total_seconds": time.perf_counter() - t_start,
    }
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "bench.json").write_text(json.dumps(result) + "\n")
    return result


def _by_shape(rms: dict[str, float], shapes: dict[str, str], hidden: dict[str, torch.Tensor]) -> dict[str, float]:
    sq, n = defaultdict(float), defaultdict(int)
    for name, r in rms.items():
        sq[shapes[name]] += r * r * hidden[name].numel()
        n[shapes[name]] += hidden[name].numel()
    return {s: math.sqrt(sq[s] / n[s]) for s in sq}


def load_if_same(spec: dict) -> dict | None:
    """The stored result of an identical spec (so a re-run only redoes what changed), else None."""
    path = Path(spec["overrides"]["out"]) / "bench.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except ValueError:
        return None
    return result if result.get("spec") == json.loads(json.dumps(spec)) else None
