"""FSDP2 + muonext Muon against FSDP2 + torch.optim.AdamW on the same mesh and model: bytes each rank
sends and receives per step, step time, optimizer state per rank, and how evenly Newton–Schulz is shared.

    .venv/bin/python bench/fsdp.py [--world 4] [--dp-shard 4] [--ep 2] [--preset tiny] [--steps 5]
    torchrun --nproc_per_node 8 bench/fsdp.py --device cuda --dp-shard 8 --ep 4 --preset ...   # NCCL

On CPU the script spawns --world processes (gloo); under torchrun it runs in the launched ranks. Both
contestants train the same Moonlight model (`muonext.parallel.parallelize_moonlight`, fp32), from the
same seed, on the same rows; each step is forward, backward, clipping and the optimizer step.

Bytes: every collective the step issues (FSDP2's all-gathers and reduce-scatters, the optimizers'
all-reduces and all-to-alls, expert parallelism's token all-to-alls) is counted by wrapping the
torch.distributed calls, with ring-algorithm volumes (as nccl-tests count them); mean over ranks.
Step time: median over --steps after --warmup, slowest rank. State: the optimizer's tensors on each
rank (largest), against the whole model's. NS: multiply-adds of Newton–Schulz per rank in a step,
busiest rank over the mean. Prints one Markdown table; the targets of the scale-out issue are
communication ≤ 1.25 × AdamW's, NS busiest ≤ 1.2 × an even share, state ≈ 1/N of the whole.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KINDS = ("all_gather", "reduce_scatter", "all_reduce", "all_to_all", "expert_all_to_all")


class ByteCounter:
    """Wraps the torch.distributed collectives this step uses; counts bytes each rank receives."""

    def __init__(self) -> None:
        import muonext.parallel.expert_parallel as ep

        self.received = dict.fromkeys(KINDS, 0)
        self.sent = dict.fromkeys(KINDS, 0)
        self._ep = ep
        self._real = {
            name: getattr(dist, name)
            for name in ("all_gather_single", "reduce_scatter_single", "all_reduce", "all_to_all_single")
        }
        self._real_funcol = ep.all_to_all_single_autograd

        def ring(kind, real, position, keyword, scale):
            """A collective whose whole buffer is argument `position` (or `keyword`): ring volume."""

            def wrapped(*args, **kwargs):
                n = dist.get_world_size(kwargs.get("group"))
                tensor = args[position] if len(args) > position else kwargs[keyword]
                volume = scale * tensor.numel() * tensor.element_size() * (n - 1) // n
                self._add(kind, volume, volume)
                return self._real[real](*args, **kwargs)

            return wrapped

        def all_to_all_single(
            output, input, output_split_sizes=None, input_split_sizes=None, group=None, **kw
        ):
            me, n = dist.get_rank(group), dist.get_world_size(group)
            row = input.element_size() * (input[0].numel() if input.dim() > 1 and len(input) else 1)
            outs = output_split_sizes or [output.shape[0] // n] * n
            ins = input_split_sizes or [input.shape[0] // n] * n
            self._add("all_to_all", (sum(ins) - ins[me]) * row, (sum(outs) - outs[me]) * row)
            return self._real["all_to_all_single"](
                output, input, output_split_sizes, input_split_sizes, group=group, **kw
            )

        def expert_all_to_all(input, output_split_sizes, input_split_sizes, group):
            me = dist.get_rank(group)
            row = input.element_size() * (input[0].numel() if len(input) else 0)
            self._add(
                "expert_all_to_all",
                (sum(input_split_sizes) - input_split_sizes[me]) * row,
                (sum(output_split_sizes) - output_split_sizes[me]) * row,
            )
            return self._real_funcol(input, output_split_sizes, input_split_sizes, group)

        dist.all_gather_single = ring("all_gather", "all_gather_single", 0, "output_tensor", 1)
        dist.reduce_scatter_single = ring("reduce_scatter", "reduce_scatter_single", 1, "input", 1)
        dist.all_reduce = ring("all_reduce", "all_reduce", 0, "tensor", 2)
        dist.all_to_all_single = all_to_all_single
        ep.all_to_all_single_autograd = expert_all_to_all

    def _add(self, kind: str, sent: int, received: int) -> None:
        self.sent[kind] += int(sent)
        self.received[kind] += int(received)

    def reset(self) -> None:
        self.received = dict.fromkeys(KINDS, 0)
        self.sent = dict.fromkeys(KINDS, 0)


def whole_model_state_bytes(model) -> dict[str, int]:
    """Optimizer state of the unsharded model: Muon (momentum per matrix, two moments otherwise) and AdamW."""
    from muonext.optim import muon_param_groups

    muon = adamw = 0
    for group in muon_param_groups(model):
        numel = sum(p.numel() for p in group["params"])
        muon += 4 * numel if group["use_muon"] else 8 * numel + 4 * len(group["params"])
        adamw += 8 * numel + 4 * len(group["params"])
    return {"muon": muon, "adamw": adamw}


def run(rank: int, world: int, args) -> dict:
    from muonext.models import MoonlightConfig, MoonlightForCausalLM
    from muonext.optim import Muon, muon_param_groups
    from muonext.parallel import ParallelDims, build_mesh, parallelize_moonlight
    from muonext.parallel.norms import clip_grad_norm_

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if args.device == "cuda" else "cpu")
    mesh = build_mesh(ParallelDims(args.dp_replicate, args.dp_shard, args.ep), device.type)
    counter = ByteCounter()
    config = MoonlightConfig.preset(args.preset)
    gen = torch.Generator().manual_seed(1)
    batches = [
        torch.randint(0, config.vocab_size, (args.micro_batch * world, args.seq_len), generator=gen)
        for _ in range(2)
    ]
    report = {}
    for name in ("muon", "adamw"):
        torch.manual_seed(0)
        with torch.device(device):
            model = MoonlightForCausalLM(config).train()
        whole = whole_model_state_bytes(model)[name]
        parallelize_moonlight(model, mesh)
        if name == "muon":
            opt = Muon(muon_param_groups(model, lr=1e-3), ns_dtype=torch.bfloat16)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, foreach=True)
        times, steps = [], []
        for t in range(args.warmup + args.steps):
            ids = batches[t % 2][rank::world].to(device)
            dist.barrier()
            counter.reset()
            start = time.perf_counter()
            model(ids, labels=ids).loss.backward()
            clip_grad_norm_(list(model.parameters()), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            steps.append((dict(counter.sent), dict(counter.received)))
        state = 0
        for s in opt.state.values():
            for v in s.values():
                if torch.is_tensor(v):
                    v = v.to_local() if hasattr(v, "to_local") else v
                    state += v.numel() * v.element_size()
        report[name] = {
            "time": statistics.median(times[args.warmup :]),
            "sent": steps[-1][0],
            "received": steps[-1][1],
            "state": state,
            "whole_state": whole,
            "ns_flops": getattr(opt, "ns_flops_last_step", 0),
        }
        del model, opt
    return report


def _entry(rank: int, world: int, init: str, args, out) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=init, rank=rank, world_size=world, timeout=timedelta(seconds=300)
    )
    try:
        out.put((rank, run(rank, world, args)))
    finally:
        dist.destroy_process_group()


def spawn(args) -> dict:
    ctx = torch.multiprocessing.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{os.path.join(tmp, 'rendezvous')}"
        procs = [ctx.Process(target=_entry, args=(r, args.world, init, args, out)) for r in range(args.world)]
        for p in procs:
            p.start()
        reports = dict(out.get(timeout=3600) for _ in range(args.world))
        for p in procs:
            p.join()
    return reports


def table(reports: dict, args) -> str:
    ranks = sorted(reports)
    world = len(ranks)

    def mean_bytes(name, direction):
        return statistics.mean(sum(reports[r][name][direction].values()) for r in ranks)

    base = {d: mean_bytes("adamw", d) for d in ("sent", "received")}
    base_time = max(reports[r]["adamw"]["time"] for r in ranks)
    title = (f"world {world} (dp_replicate {args.dp_replicate} × dp_shard {args.dp_shard}, ep {args.ep}), "
             f"{args.preset}, {args.micro_batch} × {args.seq_len} tokens per rank, {args.device}")
    header = ("| optimizer | sent MB/rank/step | received MB/rank/step | × AdamW | step s (slowest rank) "
              "| × AdamW | optimizer state MB/rank (max) | state × N / whole | NS busiest / mean |")
    lines = [title, "", header, "|---|---|---|---|---|---|---|---|---|"]
    for name in ("muon", "adamw"):
        sent, received = mean_bytes(name, "sent"), mean_bytes(name, "received")
        t = max(reports[r][name]["time"] for r in ranks)
        state = max(reports[r][name]["state"] for r in ranks)
        whole = reports[ranks[0]][name]["whole_state"]
        flops = [reports[r][name]["ns_flops"] for r in ranks]
        balance = f"{max(flops) / statistics.mean(flops):.2f}" if any(flops) else "—"
        lines.append(
            f"| {'Muon (bf16 NS)' if name == 'muon' else 'AdamW'} | {sent / 1e6:.2f} | "
            f"{received / 1e6:.2f} | {received / base['received']:.3f} | {t:.3f} | {t / base_time:.2f} | "
            f"{state / 1e6:.2f} | {state * world / whole:.3f} | {balance} |"
        )
    lines.append("")
    lines.append(
        "received MB/rank/step by kind: "
        + "; ".join(
            f"{name}: "
            + ", ".join(
                f"{k} {statistics.mean(reports[r][name]['received'][k] for r in ranks) / 1e6:.2f}"
                for k in KINDS
                if any(reports[r][name]["received"][k] for r in ranks)
            )
            for name in ("muon", "adamw")
        )
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=int, default=4, help="processes to spawn (CPU; ignored under torchrun)")
    ap.add_argument("--dp-replicate", type=int, default=1)
    ap.add_argument("--dp-shard", type=int, default=None, help="default: world / dp_replicate")
    ap.add_argument("--ep", type=int, default=2)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args()
    if "WORLD_SIZE" in os.environ:  # torchrun
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
        args.world = dist.get_world_size()
        args.dp_shard = args.dp_shard or args.world // args.dp_replicate
        if args.device == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        local = run(dist.get_rank(), args.world, args)
        reports: list = [None] * args.world
        dist.all_gather_object(reports, local)
        if dist.get_rank() == 0:
            print(table(dict(enumerate(reports)), args))
        dist.destroy_process_group()
        return
    args.dp_shard = args.dp_shard or args.world // args.dp_replicate
    print(f"torch {torch.__version__}; command: {' '.join(sys.argv)}")
    print(table(spawn(args), args))


if __name__ == "__main__":
    main()
