"""Train a Moonlight (DeepSeek-V3 MoE) language model with Muon — the package's main job.

    python examples/train_moonlight.py --preset tiny --out runs/demo          # CPU demo, a few minutes
    python examples/train_moonlight.py --preset debug --optimizer adamw       # the AdamW baseline
    python examples/train_moonlight.py --preset tiny --out runs/demo --resume auto --max-steps 300
    torchrun --nproc_per_node=4 examples/train_moonlight.py --preset tiny --dp-shard 4 --ep 2  # FSDP2 + EP
    torchrun --nproc_per_node=2 examples/train_moonlight.py --preset tiny --dp-shard 1  # DDP + ZeRO-1 Muon
    python -m muonext.train.plan --preset moonlight-16b-a3b --dp-shard 64 --ep 8 --seq-len 8192  # memory
    python examples/train_moonlight.py --sft chat.jsonl --init-from runs/demo # SFT on response tokens
    python -m muonext.train.plots runs/demo                                   # plots on demand

Every TrainConfig field is a flag (`--help` lists them). Writes metrics.jsonl, run.json, plots,
checkpoints/, sample.txt and export/ (transformers format) into --out.
"""

from muonext.train import main

if __name__ == "__main__":
    main()
