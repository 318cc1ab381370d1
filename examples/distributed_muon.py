"""Distributed Muon (ZeRO-1) on CPU: a small mixture-of-experts model trained over gloo.

    torchrun --nproc_per_node=2 examples/distributed_muon.py [--steps 30] [--mode owner]

Each rank sees its own batches; DistributedMuon averages the gradients (reduce-scatter), keeps the
optimizer state of its 1/N slice only, and all-gathers the parameters. Every rank prints its optimizer
memory and the bytes it moved per step; rank 0 prints the loss.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torch import nn

from muonext.optim import DistributedMuon, muon_param_groups


class TinyMoE(nn.Module):
    """Token embedding → (dense mixture of E experts, weights stored as one (E, out, in) tensor) → head."""

    def __init__(self, vocab=64, width=48, hidden=96, experts=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.norm = nn.LayerNorm(width)
        self.router = nn.Linear(width, experts, bias=False)
        self.w_up = nn.Parameter(torch.randn(experts, hidden, width) * width**-0.5)    # (E, H, D)
        self.w_down = nn.Parameter(torch.randn(experts, width, hidden) * hidden**-0.5)  # (E, D, H)
        self.lm_head = nn.Linear(width, vocab)

    def forward(self, tokens):                                   # (B, T) → (B, T, vocab)
        x = self.embed(tokens)                                   # (B, T, D)
        h = self.norm(x)
        gates = self.router(h).softmax(-1)                       # (B, T, E)
        up = torch.einsum("btd,ehd->bteh", h, self.w_up).relu()  # (B, T, E, H)
        out = torch.einsum("bteh,edh->bted", up, self.w_down)    # (B, T, E, D)
        return self.lm_head(x + (gates.unsqueeze(-1) * out).sum(2))


def batch(rank: int, step: int, size=16, length=24, vocab=64):
    """A learnable task: map each token to (7·token + 3) mod vocab (same rule on every rank, other data)."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    tokens = torch.randint(0, vocab, (size, length), generator=g)
    return tokens, (7 * tokens + 3) % vocab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=2e-2)
    ap.add_argument("--mode", choices=("gather", "owner"), default="gather")
    ap.add_argument("--bucket-mb", type=float, default=0.05)
    args = ap.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every rank
    model = TinyMoE()
    opt = DistributedMuon(muon_param_groups(model), lr=args.lr, mode=args.mode, bucket_mb=args.bucket_mb)
    for step in range(args.steps):
        tokens, targets = batch(rank, step)
        loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss = loss.detach()
        dist.all_reduce(loss)
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:3d}  loss {loss.item() / world:.4f}", flush=True)

    state_single = sum(p.numel() * p.element_size() * (1 if len(p.shape) >= 2 and name not in ("embed.weight",
                       "lm_head.weight") else 2) for name, p in model.named_parameters())
    moved = {k: v["sent"] + v["received"] for k, v in opt.comm_bytes.items()}
    lines = [(f"rank {rank}/{world} mode={args.mode}: optimizer state {opt.state_bytes() / 1024:.1f} KiB "
              f"(single-process Muon ≈ {state_single / 1024:.1f} KiB), Newton–Schulz "
              f"{opt.ns_flops_per_step() / 1e6:.2f} M multiply-adds/step"),
             "  bytes sent+received last step: " + ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in moved.items())]
    for r in range(world):  # one rank at a time, so the lines do not interleave
        if r == rank:
            print("\n".join(lines), flush=True)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
