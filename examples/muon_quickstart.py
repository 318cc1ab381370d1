"""Muon vs AdamW at the same learning rate and weight decay, on a small byte-level transformer.

The data is the Python standard library's own source (bytes, nothing downloaded). Both runs start
from the same weights and see the same batches; Muon reuses AdamW's lr and weight decay unchanged,
which is what "match_rms_adamw" update scaling is for (Moonlight, §2.2).

    python examples/muon_quickstart.py [--steps 200] [--lr 3e-3]
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch
from torch import nn

from muonext.data import read_stdlib_corpus
from muonext.optim import Muon, muon_param_groups


class ByteTransformer(nn.Module):
    """A causal pre-norm transformer over bytes: (B, T) int64 -> (B, T, 256) logits."""

    def __init__(self, width=128, layers=2, heads=4, context=128):
        super().__init__()
        self.embed = nn.Embedding(256, width)
        self.pos_embed = nn.Embedding(context, width)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, 256, bias=False)

    def forward(self, x):
        t = x.shape[1]
        h = self.embed(x) + self.pos_embed(torch.arange(t, device=x.device))
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=x.device)
        return self.lm_head(self.norm(self.blocks(h, mask=mask, is_causal=True)))


def batches(data: torch.Tensor, batch: int, context: int, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, data.numel() - context - 1, (batch,), generator=g)
        chunk = torch.stack([data[s : s + context + 1] for s in starts.tolist()])
        yield chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def evaluate(model, data, context, batches_n=8):
    losses = [nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
              for x, y in batches(data, 16, context, batches_n, seed=1234)]
    return sum(losses) / len(losses)


def train(name, model, opt, train_data, val_data, args):
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    start, losses = time.perf_counter(), []
    for step, (x, y) in enumerate(batches(train_data, args.batch, args.context, args.steps, args.seed)):
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % max(1, args.steps // 5) == 0 or step == args.steps - 1:
            print(f"  {name:6s} step {step:4d}  loss {loss.item():.3f}", flush=True)
    tail = losses[-max(1, args.steps // 10):]
    return sum(tail) / len(tail), evaluate(model, val_data, args.context), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--corpus-mb", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    corpus = torch.frombuffer(bytearray(read_stdlib_corpus(int(args.corpus_mb * 2**20))), dtype=torch.uint8).long()
    split = int(0.95 * corpus.numel())
    train_data, val_data = corpus[:split], corpus[split:]
    print(f"corpus: {corpus.numel() / 2**20:.1f} MiB of Python standard-library source "
          f"({train_data.numel():,} train / {val_data.numel():,} validation bytes)")

    torch.manual_seed(args.seed)
    base = ByteTransformer(context=args.context)
    print(f"model: {sum(p.numel() for p in base.parameters()):,} parameters; lr {args.lr}, weight decay "
          f"{args.weight_decay}, {args.steps} steps of {args.batch}×{args.context} bytes")
    rows = []
    for name in ("AdamW", "Muon"):
        model = copy.deepcopy(base)
        if name == "Muon":
            opt = Muon(muon_param_groups(model), lr=args.lr, weight_decay=args.weight_decay)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
        rows.append((name, *train(name, model, opt, train_data, val_data, args)))

    print(f"\n{'optimizer':10s} {'train loss':>10s} {'val loss':>9s} {'val bits/byte':>13s} {'time (s)':>9s}")
    for name, train_loss, val_loss, seconds in rows:
        print(f"{name:10s} {train_loss:10.3f} {val_loss:9.3f} {val_loss / math.log(2):13.3f} {seconds:9.1f}")
    print(f"\nMuon's validation loss is {rows[0][2] - rows[1][2]:+.3f} nats lower than AdamW's at the same lr/wd.")


if __name__ == "__main__":
    main()
