"""Distributed Muon vs ZeRO-1 AdamW: bytes moved, step time, optimizer memory, NS balance (gloo, CPU).

    .venv/bin/python bench/distributed.py [--worlds 2 4] [--steps 6] [--width 256]

For each world size N (all contestants in the same spawned run, on the same model and gradients):
* DistributedMuon, mode="gather" (the paper) and mode="owner", grads="local" (its reduce-scatter
  averages the gradients), ns_dtype=bf16;
* torch.distributed.optim.ZeroRedundancyOptimizer wrapping torch.optim.AdamW, after an all-reduce of
  the gradients (what DDP does);
* "ideal ZeRO-1 AdamW": reduce-scatter + all-gather of fp32 (Megatron's distributed optimizer),
  the paper's baseline, computed from the layout (not run).
Bytes are those received per rank per step (mean over ranks), ring-algorithm volumes (see
muonext/optim/dist_comm.py); the baseline's collectives are counted by patching torch.distributed.
Step time is the optimizer step (plus the gradient all-reduce for the baseline), median over --steps
after warm-up, max over ranks. Prints Markdown tables with "× baseline" columns.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def model_shapes(width: int, layers: int, experts: int, vocab: int) -> dict[str, tuple[int, ...]]:
    shapes = {"embed": (vocab, width)}
    for i in range(layers):
        for name in ("q", "k", "v", "o"):
            shapes[f"l{i}.attn.{name}"] = (width, width)
        shapes[f"l{i}.mlp.up"] = (4 * width, width)
        shapes[f"l{i}.mlp.down"] = (width, 4 * width)
        shapes[f"l{i}.moe.experts"] = (experts, width // 2, width)
        shapes[f"l{i}.norm"] = (width,)
    shapes["lm_head"] = (vocab, width)
    return shapes


def _count(counter: dict, kind: str, received: int) -> None:
    counter[kind] = counter.get(kind, 0) + int(received)


def worker(rank: int, world: int, init: str, args, out) -> None:
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    from muonext.optim import DistributedMuon

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    shapes = model_shapes(args.width, args.layers, args.experts, args.vocab)
    gen = torch.Generator().manual_seed(0)
    params = {k: torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for k, s in shapes.items()}
    grads = [{k: torch.randn(s, generator=torch.Generator().manual_seed(100 * t + rank)) for k, s in shapes.items()}
             for t in range(2)]

    counted: dict[str, int] = {}
    real_broadcast, real_all_reduce = dist.broadcast, dist.all_reduce

    def broadcast(tensor, src, *a, **k):  # ring/pipeline: every rank but the source receives the tensor
        _count(counted, "broadcast", 0 if dist.get_rank() == src else tensor.numel() * tensor.element_size())
        return real_broadcast(tensor, src, *a, **k)

    dist.broadcast = broadcast

    def grad_all_reduce():  # the DDP part of the baseline: one flat fp32 all-reduce of the gradients
        flat = torch.cat([p.grad.reshape(-1) for p in params.values()])
        _count(counted, "all_reduce", 2 * flat.numel() * 4 * (world - 1) // world)
        real_all_reduce(flat)
        flat /= world

    contestants = {
        "DistributedMuon gather": lambda: DistributedMuon(list(params.items()), lr=1e-3, mode="gather",
                                                          bucket_mb=args.bucket_mb),
        "DistributedMuon owner": lambda: DistributedMuon(list(params.items()), lr=1e-3, mode="owner",
                                                         bucket_mb=args.bucket_mb),
        "ZeroRedundancyOptimizer(AdamW)": lambda: ZeroRedundancyOptimizer(
            list(params.values()), optimizer_class=torch.optim.AdamW, lr=1e-3, weight_decay=0.1),
    }
    report = {}
    for name, make in contestants.items():
        opt = make()
        is_muon = isinstance(opt, DistributedMuon)
        times = []
        for t in range(args.warmup + args.steps):
            for k, p in params.items():
                p.grad = grads[t % 2][k].clone()
            counted.clear()
            dist.barrier()
            start = time.perf_counter()
            if not is_muon:
                grad_all_reduce()
            opt.step()
            times.append(time.perf_counter() - start)
        if is_muon:
            received = {k: v["received"] for k, v in opt.comm_bytes.items()}
            state = opt.state_bytes()
            flops = opt.ns_flops_per_step()
            shard_bytes = max(b.shard * b.dtype.itemsize for b in opt.layout.buckets)
        else:
            received = dict(counted)
            state = sum(v.numel() * v.element_size() for s in opt.optim.state.values() for v in s.values()
                        if torch.is_tensor(v))
            flops, shard_bytes = 0, 0
        report[name] = {"time": statistics.median(times[args.warmup:]), "received": received, "state": state,
                        "flops": flops, "shard_bytes": shard_bytes}
        del opt
    dist.broadcast = real_broadcast
    out.put((rank, report))
    dist.barrier()
    dist.destroy_process_group()


def single_process_figures(shapes) -> dict:
    from muonext.optim import is_muon_param
    from muonext.optim.muon import matrix_shape
    from muonext.optim.shard_layout import ns_flops

    numel = sum(math.prod(s) for s in shapes.values())
    muon = {k: s for k, s in shapes.items() if is_muon_param(k, torch.empty(s, device="meta"))}
    muon_numel = sum(math.prod(s) for s in muon.values())
    state = muon_numel * 4 + (numel - muon_numel) * 8 + 4 * (len(shapes) - len(muon))
    flops = sum(matrix_shape(s)[0] * ns_flops(*matrix_shape(s)[1:]) for s in muon.values()) * 5
    return {"numel": numel, "state": state, "flops": flops}


def run_world(world: int, args) -> dict:
    ctx = torch.multiprocessing.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{os.path.join(tmp, 'rendezvous')}"
        procs = [ctx.Process(target=worker, args=(r, world, init, args, out)) for r in range(world)]
        for p in procs:
            p.start()
        reports = dict(out.get(timeout=1800) for _ in range(world))
        for p in procs:
            p.join()
    return reports


def table(world: int, reports: dict, single: dict) -> str:
    base_name = "ZeroRedundancyOptimizer(AdamW)"
    ranks = sorted(reports)
    names = list(reports[ranks[0]])

    def recv(name):
        return statistics.mean(sum(reports[r][name]["received"].values()) for r in ranks)

    base_recv = recv(base_name)
    base_time = max(reports[r][base_name]["time"] for r in ranks)
    ideal = 2 * single["numel"] * 4 * (world - 1) / world  # reduce-scatter + all-gather, fp32
    rows = [(f"| N={world} | received B/rank/step | × ZeRO(AdamW) | × ideal ZeRO-1 | step ms | × ZeRO(AdamW) "
             "| state B/rank (max) | × single-Muon/N | ≤ single/N + slice | NS max/(total/N) |"),
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        b = recv(name)
        t = max(reports[r][name]["time"] for r in ranks)
        state = max(reports[r][name]["state"] for r in ranks)
        if name == base_name:
            state_cols = f"{state:,} | — | — | —"
        else:
            slice_bound = single["state"] / world + 2 * max(reports[r][name]["shard_bytes"] for r in ranks)
            flops = max(reports[r][name]["flops"] for r in ranks)
            state_cols = (f"{state:,} | {state / (single['state'] / world):.3f} | {'yes' if state <= slice_bound else 'NO'} "
                          f"| {flops / (single['flops'] / world):.2f}")
        rows.append(f"| {name} | {b:,.0f} | {b / base_recv:.2f} | {b / ideal:.3f} | {t * 1e3:.1f} | "
                    f"{t / base_time:.2f} | {state_cols} |")
    rows.append(f"| ideal ZeRO-1 AdamW (RS + AG, fp32) | {ideal:,.0f} | {ideal / base_recv:.2f} | 1.000 | | | | | | |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--bucket-mb", type=float, default=4.0)
    args = ap.parse_args()
    shapes = model_shapes(args.width, args.layers, args.experts, args.vocab)
    single = single_process_figures(shapes)
    print(f"model: {single['numel']:,} parameters ({len(shapes)} tensors); single-process Muon state "
          f"{single['state']:,} B; NS {single['flops'] / 1e9:.2f} G multiply-adds/step; torch {torch.__version__}")
    for world in args.worlds:
        print()
        print(table(world, run_world(world, args), single), flush=True)


if __name__ == "__main__":
    main()
