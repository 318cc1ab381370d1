"""The training loop: Muon (or AdamW) on Moonlight, one process or torchrun (DESIGN.md §6).

Per step: grad_accum micro-batches of the *global* batch (each rank keeps its rows), loss scaled so that
the gradients summed over micro-batches and ranks are the global token-mean; gradients reduced by torch
(FSDP2's reduce-scatter as a sum when sharded, DDP's all-reduce mean when replicated, hence the loss
scale); clipping by the global norm; lr from the schedule; optimizer step; aux-loss-free router bias
update with the expert loads summed over ranks. Every `log_every` steps a metrics line; periodic
validation; atomic checkpoints (DCP when sharded); at the end a sample, an export (transformers
format) and plots.
"""

from __future__ import annotations

import functools
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.loader import Loader, eval_batches, shard_rows
from ..data.sft import IGNORE
from ..models import MoonlightForCausalLM, generate, save_pretrained
from ..optim import DistributedMuon, Muon, QKClip, to_muon_state_dict
from ..parallel import full_state_dict, materialize, parallelize_moonlight
from ..parallel.norms import clip_grad_norm_, squared_sums
from .build import build_data, build_model, build_optimizer, model_config_dict
from .checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from .config import TrainConfig
from .metrics import MetricsLogger, update_rms_by_kind, weight_rms_by_kind
from .runtime import Runtime, setup_runtime
from .schedule import lr_factor, set_lr

# settings that a resumed run must share with the original to continue it exactly
RESUME_FIELDS = ("model", "data", "sft", "seq_len", "batch_size", "grad_accum", "seed", "max_corpus_bytes",
                 "val_fraction", "precision", "ns_dtype", "qk_clip")


@dataclass
class TrainResult:
    out: Path
    step: int
    val_loss: float | None
    sample: str | None
    checkpoint: Path | None


def _n_targets(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE).sum())


class Trainer:
    def __init__(self, cfg: TrainConfig, rt: Runtime):
        self.cfg, self.rt = cfg, rt
        if cfg.batch_size % rt.world_size:
            raise ValueError(f"TrainConfig.batch_size ({cfg.batch_size}) must be a multiple of the number of "
                             f"processes ({rt.world_size}): it is the global batch, split over ranks")
        self.out = Path(cfg.out)
        self.ckpt_root = self.out / "checkpoints"
        resume_dir = None
        if cfg.resume == "auto":
            resume_dir = latest_checkpoint(self.ckpt_root)
        elif cfg.resume is not None:
            resume_dir = Path(cfg.resume)
        ck = load_checkpoint(resume_dir) if resume_dir is not None else None
        self.data = build_data(cfg, rt, resume_dir)
        self._keep_tokenizer()
        self.model = self._build_model(ck.shared["model_config"] if ck else None)
        self.optimizer = build_optimizer(cfg, self.model, rt)
        self.qk_clip = None
        if cfg.qk_clip > 0 or cfg.log_max_logits:  # math.inf: record and log, never clip
            self.qk_clip = QKClip(self.model, cfg.qk_clip if cfg.qk_clip > 0 else math.inf)
        # DDP averages gradients over ranks; the loss is scaled for a sum (what FSDP2 is set to do)
        self.loss_scale = float(rt.world_size) if rt.distributed and not rt.sharded else 1.0
        self.loader = Loader(self.data.train, cfg.batch_size, cfg.seed)
        self.val_batches = eval_batches(self.data.val, cfg.batch_size, cfg.eval_batches)
        self.step, self.tokens_seen, self.val_loss = 0, 0, None
        self.numels = {n: p.numel() for n, p in self.model.named_parameters()}
        if ck is not None:
            self._restore(ck)
        self.logger = MetricsLogger(self.out, rt.is_main, self.step if ck else None)

    def _keep_tokenizer(self) -> None:
        """A copy in the run directory: the checkpoint it was read from may be pruned while the run goes on,
        and every later checkpoint and the export copy it in."""
        own = self.out / "tokenizer.json"
        if self.rt.is_main and self.data.tokenizer_path.resolve() != own.resolve():
            self.out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.data.tokenizer_path, own)
        self.rt.barrier()
        self.data.tokenizer_path = own

    def _build_model(self, model_config: dict | None) -> MoonlightForCausalLM:
        """Whole on every rank, then replicated (DDP) or sharded; or, for a sharded run that does not
        start from given weights, built on the meta device, sharded, and only then allocated: no rank
        ever holds the whole model (a resumed run's weights then come from its DCP checkpoint)."""
        cfg, rt = self.cfg, self.rt
        shard = functools.partial(parallelize_moonlight, mesh=rt.mesh,
                                  activation_checkpointing=cfg.activation_checkpointing,
                                  param_dtype=torch.bfloat16 if cfg.precision == "bf16" else None)
        if rt.sharded and cfg.init_from is None:
            with torch.device("meta"):  # build_model seeds the random stream; the meta build draws nothing
                model = build_model(cfg, self.data, model_config)
            return materialize(shard(model), rt.device)  # the values a whole model built with that seed gets
        model = build_model(cfg, self.data, model_config).to(rt.device)
        if rt.sharded:
            return shard(model)
        if rt.distributed:  # torch's DDP; no buffer broadcast: rank 0 alone samples at the end
            from torch.distributed._composable.replicate import replicate

            replicate(model, device_ids=None if self.rt.device.type == "cpu" else [self.rt.device],
                      broadcast_buffers=False)
        return model

    # ------------------------------------------------------------------ checkpoints
    def _sharded_state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def _restore_weights_and_optimizer(self, ck) -> None:
        if ck.sharded:
            if isinstance(self.optimizer, DistributedMuon):
                raise CheckpointError(f"{ck.path}: written by a sharded run; resume it sharded (--dp-shard > "
                                      "1) or in one process, not with a replicated model (dp_shard 1)")
            from torch.distributed.checkpoint.state_dict import set_state_dict

            state = self._sharded_state()
            ck.load_sharded(state)
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optim"])
            if isinstance(self.optimizer, Muon):
                self.optimizer.skipped_steps = ck.shared.get("skipped_steps", 0)
            return
        if self.rt.sharded:
            raise CheckpointError(f"{ck.path}: written by an unsharded run; resume it the same way, or start "
                                  "a sharded run from its weights with --init-from")
        self.model.load_state_dict(ck.model_state())
        same = ck.world_size == self.rt.world_size
        mine = ck.rank_state(self.rt.rank) if self.rt.rank < ck.world_size else None
        if same or isinstance(self.optimizer, torch.optim.AdamW):
            self.optimizer.load_state_dict((mine or ck.rank_state(0))["optimizer"])
        else:  # another world size: merge the shards (DistributedMuon protocol)
            shards = [ck.rank_state(r)["optimizer"] for r in range(ck.world_size)]
            if isinstance(self.optimizer, DistributedMuon):
                self.optimizer.load_state_dict(shards if ck.world_size > 1 else shards[0])
            else:
                self.optimizer.load_state_dict(to_muon_state_dict(shards))

    def _restore(self, ck) -> None:
        if ck.shared["optimizer_kind"] != self.cfg.optimizer:
            raise ValueError(f"{ck.path}: was trained with optimizer {ck.shared['optimizer_kind']!r}, "
                             f"TrainConfig.optimizer is {self.cfg.optimizer!r}")
        self._restore_weights_and_optimizer(ck)
        for moe in self.model.moe_layers():
            moe.reset_load()
        s = ck.shared
        changed = {k: (s["config"][k], getattr(self.cfg, k)) for k in RESUME_FIELDS
                   if k in s["config"] and s["config"][k] != getattr(self.cfg, k)}
        if changed:
            warnings.warn(f"resuming {ck.path} with changed settings {changed} (checkpoint, now): the run will "
                          "not match one that never stopped", stacklevel=2)
        self.step, self.tokens_seen, self.val_loss = s["step"], s["tokens_seen"], s.get("val_loss")
        self.loader.load_state_dict(s["loader"])
        mine = ck.rank_state(self.rt.rank) if self.rt.rank < ck.world_size else None
        if mine is not None:
            torch.set_rng_state(mine["rng"]["torch"])
            if "cuda" in mine["rng"] and self.rt.device.type == "cuda":
                torch.cuda.set_rng_state(mine["rng"]["cuda"], self.rt.device)

    def save(self) -> Path:
        rng = {"torch": torch.get_rng_state()}
        if self.rt.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.rt.device)
        shared = {"tokens_seen": self.tokens_seen, "loader": self.loader.state_dict(),
                  "val_loss": self.val_loss, "optimizer_kind": self.cfg.optimizer,
                  "config": self.cfg.to_dict(),
                  "model_config": model_config_dict(self.model),
                  "skipped_steps": getattr(self.optimizer, "skipped_steps", 0)}
        if self.rt.sharded:  # DCP: every rank writes its shards of model and optimizer
            weights = {"sharded_state": self._sharded_state(), "rank_state": {"rng": rng}}
        else:
            weights = {"model_state": self.model.state_dict(),
                       "rank_state": {"optimizer": self.optimizer.state_dict(), "rng": rng}}
        path = save_checkpoint(
            self.ckpt_root, self.step, **weights, shared=shared,
            files={"tokenizer.json": self.data.tokenizer_path}, rank=self.rt.rank,
            world_size=self.rt.world_size, barrier=self.rt.barrier)
        if self.rt.is_main:
            prune_checkpoints(self.ckpt_root, self.cfg.keep_last, self.cfg.keep_every)
        self.rt.barrier()
        return path

    # ------------------------------------------------------------------ one step
    def _forward(self, ids: torch.Tensor, labels: torch.Tensor):
        # bf16: autocast, or FSDP2's bf16 gathers when sharded (see parallelize_moonlight)
        autocast = self.cfg.precision == "bf16" and not self.rt.sharded
        with torch.autocast(self.rt.device.type, dtype=torch.bfloat16, enabled=autocast):
            return self.model(ids.to(self.rt.device), labels=labels.to(self.rt.device))

    def train_step(self, detailed: bool = True) -> dict:
        """One optimizer step; returns its metrics (per-kind RMS and load statistics when `detailed`)."""
        cfg, rt = self.cfg, self.rt
        micro = [self.loader.next_batch() for _ in range(cfg.grad_accum)]
        n_global = max(sum(_n_targets(lab) for _, lab in micro), 1)
        rows_global = cfg.batch_size * cfg.grad_accum
        loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
        for ids, labels in micro:
            ids, labels = shard_rows(ids, rt.rank, rt.world_size), shard_rows(labels, rt.rank, rt.world_size)
            n_local = _n_targets(labels)
            out = self._forward(ids, labels)
            if n_local == 0:  # keep every rank's gradient list the same
                loss = out.logits.sum() * 0.0
            else:
                loss = out.lm_loss * (n_local / n_global)
                loss_sum += out.lm_loss.detach().double() * n_local
            if out.aux_loss is not None:
                loss = loss + out.aux_loss * (ids.shape[0] / rows_global)
            (loss * self.loss_scale).backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        lr = cfg.lr * lr_factor(self.step, cfg.max_steps, cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio,
                                cfg.decay_fraction)
        set_lr(self.optimizer, lr)
        before = self._snapshot_for_rms() if detailed else None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        logit_stats = self._clip_logits() if self.qk_clip is not None else {}
        loads = rt.all_reduce_sum(self.model.expert_loads(accumulated=True).to(rt.device))
        load_stats = self.model.update_router_bias(cfg.bias_update_rate, loads.cpu())
        self.step += 1
        self.tokens_seen += cfg.batch_size * cfg.seq_len * cfg.grad_accum
        rec = {"step": self.step, "loss": float(rt.all_reduce_sum(loss_sum)) / n_global, "lr": lr,
               "grad_norm": float(grad_norm), "tokens": self.tokens_seen, **logit_stats}
        if detailed:
            rec.update(self._update_rms(before, lr))
            rec.update(weight_rms_by_kind(self.model))
        layer_max = [v for k, v in load_stats.items() if k.endswith("/max_over_mean")]
        if layer_max:
            rec["expert_load/max_over_mean"] = max(layer_max)
            rec["expert_load/maxvio"] = load_stats["moe/maxvio"]
        return rec

    def _clip_logits(self) -> dict[str, float]:
        """QK-clip after the step; the max logit seen in this step's forwards (before the clip) per layer."""
        clipped = self.qk_clip.step()
        layer_max = self.qk_clip.layer_max()
        stats = {f"attn/max_logit/layer{name.split('.')[-2]}": v for name, v in layer_max.items()}
        if layer_max:
            stats["attn/max_logit"] = max(layer_max.values())
        return {**stats, "attn/clipped_heads": clipped}

    def _snapshot_for_rms(self):
        """AdamW has no `update_rms`: keep the weights to recover its lr-free update from the change."""
        if isinstance(self.optimizer, Muon):
            return None
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    @torch.no_grad()
    def _update_rms(self, before, lr: float) -> dict[str, float]:
        if isinstance(self.optimizer, Muon):
            return update_rms_by_kind(self.optimizer.update_rms, self.numels)
        if before is None:
            return {}
        wd = self.cfg.weight_decay
        names, updates = [], []
        for n, p in self.model.named_parameters():  # p = p0·(1 − lr·wd) − lr·u
            names.append(n)
            updates.append((before[n] * (1 - lr * wd) - p) / lr)
        sums = squared_sums(updates)
        rms = {n: math.sqrt(float(sq) / max(self.numels[n], 1)) for n, sq in zip(names, sums)}
        return update_rms_by_kind(rms, self.numels)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> float:
        was = self.model.training
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.rt.device)
        for ids, labels in self.val_batches:
            ids, labels = shard_rows(ids, self.rt.rank, self.rt.world_size), \
                shard_rows(labels, self.rt.rank, self.rt.world_size)
            n = _n_targets(labels)
            out = self._forward(ids, labels)  # every rank runs every forward: sharded layers gather together
            if n == 0:
                continue
            total += torch.stack([out.lm_loss.double() * n, torch.tensor(float(n), device=self.rt.device,
                                                                          dtype=torch.float64)])
        self.model.train(was)
        self.rt.all_reduce_sum(total)
        return float(total[0] / total[1].clamp_min(1))

    # ------------------------------------------------------------------ the run
    def run(self) -> TrainResult:
        cfg, rt = self.cfg, self.rt
        self.model.train()
        if self.step == 0 or not (self.out / "run.json").exists():
            self.logger.header(cfg.to_dict(), world_size=rt.world_size, device=str(rt.device),
                               model_config=model_config_dict(self.model),
                               parameters=self.model.num_parameters(),
                               activated_parameters=self.model.num_activated_parameters(),
                               tokenizer=str(self.data.tokenizer_path),
                               train_tokens=self.data.train.num_tokens, val_tokens=self.data.val.num_tokens)
        end = cfg.stop_at or cfg.max_steps
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (rt.is_main and cfg.progress),
                   dynamic_ncols=True, desc="train")
        while self.step < end:
            step = self.step + 1
            evaluating = (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps
            logging = step % cfg.log_every == 0 or evaluating
            t0 = time.perf_counter()
            rec = self.train_step(detailed=logging)
            rec["tokens_per_s"] = cfg.tokens_per_step / (time.perf_counter() - t0)
            if evaluating:
                self.val_loss = self.evaluate()
                rec["val_loss"], rec["val_ppl"] = self.val_loss, math.exp(min(self.val_loss, 50.0))
            if logging:
                self.logger.log(rec)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}",
                            **({"val": f"{self.val_loss:.3f}"} if self.val_loss is not None else {}))
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < end:
                self.save()
        bar.close()
        ckpt = self.save()
        sample = self.finish() if self.step == cfg.max_steps else None
        self.logger.close()
        return TrainResult(self.out, self.step, self.val_loss, sample, ckpt)

    def _whole_model(self) -> MoonlightForCausalLM | None:
        """The model in one piece on rank 0 (gathered from the shards when sharded), None elsewhere."""
        if not self.rt.sharded:
            return self.model if self.rt.is_main else None
        state = full_state_dict(self.model)  # every rank takes part
        if not self.rt.is_main:
            return None
        whole = MoonlightForCausalLM(self.model.config)
        whole.load_state_dict(state)
        return whole.to(self.rt.device).train(self.model.training)

    def finish(self) -> str | None:
        """Rank 0: sample text, export to out/export (transformers format), plots."""
        sample = None
        whole = self._whole_model() if self.cfg.sample_tokens or self.cfg.export else None
        if self.rt.is_main:
            if self.cfg.sample_tokens:
                sample = self.sample(whole, self.cfg.sample_tokens)
                (self.out / "sample.txt").write_text(sample)
            if self.cfg.export:
                save_pretrained(whole, self.out / "export")
                (self.out / "export" / "tokenizer.json").write_bytes(self.data.tokenizer_path.read_bytes())
            if self.cfg.plots:
                from .plots import write_plots
                write_plots(self.out)
        self.rt.barrier()
        return sample

    def sample(self, model: MoonlightForCausalLM, n_tokens: int) -> str:
        tok = self.data.tokenizer
        prompt = tok.encode(self.data.prompt_text, add_special_tokens=False).ids or [self.data.eos]
        gen = torch.Generator(device=self.rt.device).manual_seed(self.cfg.seed)
        res = generate(model, [prompt], max_new_tokens=n_tokens, temperature=0.8, top_k=40,
                       stop_tokens=[self.data.eos], generator=gen)
        return tok.decode(prompt + res.tokens[0], skip_special_tokens=False)


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) a training run described by `cfg`; under torchrun every rank calls this."""
    rt = setup_runtime(cfg.device, cfg.dp_replicate, cfg.dp_shard, cfg.ep)
    try:
        result = Trainer(cfg, rt).run()
    finally:
        rt.close()
    if rt.is_main:
        if result.val_loss is not None:
            print(f"final validation loss {result.val_loss:.4f} (perplexity {math.exp(min(result.val_loss, 50)):.1f})"
                  f" after {result.step} steps")
        if result.sample is not None:
            print("sample:\n" + result.sample)
        print(f"run directory: {result.out}")
    return result
