"""Training pipeline (DESIGN.md §6): config, data, Muon/AdamW loop, metrics, plots, atomic checkpoints.

    from muonext.train import TrainConfig, train
    train(TrainConfig.from_preset("tiny", out="runs/demo"))
"""

from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .cli import main, parse_config
from .config import PRESETS, TrainConfig
from .trainer import Trainer, TrainResult, train

__all__ = [
    "PRESETS",
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "latest_checkpoint",
    "load_checkpoint",
    "main",
    "parse_config",
    "save_checkpoint",
    "train",
]
