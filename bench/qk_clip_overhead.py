"""What recording the max logits and QK-clip cost per training step (issue 20: "cheap").

One Muon training step of a Moonlight preset (forward, backward, optimizer step) without recording,
with recording (`QKClip(threshold=inf)`: the blocked max over q·k in every attention) and with clipping
(τ = 0.1, under the initial logits of every head, so that heads are rescaled at every step by a γ near 1:
weights never shrink towards denormals), timed interleaved on the same batch, median of repeats; the ratio
to the step without is the figure.

    .venv/bin/python bench/qk_clip_overhead.py --preset tiny --batch 16 --seq 128 --repeats 15
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timer import interleaved_medians  # noqa: E402

from muonext.models import MoonlightConfig, MoonlightForCausalLM  # noqa: E402
from muonext.optim import Muon, QKClip, muon_param_groups  # noqa: E402


def make_step(preset: str, batch: int, seq: int, tau: float | None):
    torch.manual_seed(0)
    model = MoonlightForCausalLM(MoonlightConfig.preset(preset)).train()
    opt = Muon(muon_param_groups(model), lr=1e-3)
    clip = QKClip(model, tau) if tau is not None else None
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1))

    def step():
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if clip is not None:
            clip.step()

    return step, clip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    steps = {
        "no recording": make_step(args.preset, args.batch, args.seq, None),
        "recording (threshold inf)": make_step(args.preset, args.batch, args.seq, math.inf),
        "recording + clipping (τ 0.1)": make_step(args.preset, args.batch, args.seq, 0.1),
    }
    times = interleaved_medians({name: fn for name, (fn, _) in steps.items()}, repeats=args.repeats, warmup=2)
    base = times["no recording"]
    print(f"{args.preset}, batch {args.batch} x {args.seq}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print("| step | median s | ratio |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.4f} | {t / base:.3f} |")
    clip = steps["recording + clipping (τ 0.1)"][1]
    heads = sum(len(v) for v in clip.max_logits.values())
    print(f"heads clipped at the last step: {sum(clip.clipped.values())} of {heads}")


if __name__ == "__main__":
    main()
