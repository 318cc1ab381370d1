"""Command line of `examples/train_moonlight.py`: one flag per TrainConfig field, generated from the dataclass.

`--preset NAME` picks the starting values; every other flag overrides one field (`--max-steps 100`,
`--no-export`, `--tokenizer none`). Invalid values stop here, before any work, with the field's name.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from typing import Any

from .config import PRESETS, TrainConfig

_COMMENT = re.compile(r"^\s+(\w+): [^#]*#\s*(.+)$")


def _field_help() -> dict[str, str]:
    """The trailing comment of each field in config.py is its help text."""
    helps = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        m = _COMMENT.match(line)
        if m:
            helps[m.group(1)] = m.group(2).replace("%", "%%")
    return helps


def _converter(annotation: str, name: str):
    base = annotation.replace(" | None", "")
    optional = base != annotation
    cast = {"int": int, "float": float, "str": str}.get(base, float)

    def convert(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        try:
            return cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"TrainConfig.{name} must be {annotation}, got {text!r}") from None

    convert.__name__ = base
    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_moonlight.py", description="Train a Moonlight (DeepSeek-V3 MoE) model with Muon.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, argument_default=argparse.SUPPRESS)
    helps = _field_help()
    parser.add_argument("--preset", choices=sorted(PRESETS), default="debug",
                        help="starting values: model preset, batch, sequence length, steps")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "preset":
            continue
        flag = "--" + f.name.replace("_", "-")
        text = helps.get(f.name, "") + f" [{f.type}]"
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        elif f.name == "resume":  # a bare --resume means auto
            parser.add_argument(flag, nargs="?", const="auto", type=_converter(f.type, f.name),
                                metavar="DIR|auto", help=text + " (a bare --resume means auto)")
        elif f.type.startswith("tuple"):
            parser.add_argument(flag, nargs=2, type=_converter("float", f.name), metavar=("B1", "B2"), help=text)
        else:
            parser.add_argument(flag, type=_converter(f.type, f.name), metavar=f.type.split(" ")[0].upper(),
                                help=text)
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """argv -> a validated TrainConfig (exits with a message naming the field on a bad value)."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    preset = args.pop("preset")
    if "betas" in args:
        args["betas"] = tuple(args["betas"])
    try:
        return TrainConfig.from_preset(preset, **args)
    except ValueError as e:
        parser.error(str(e))


def main(argv: list[str] | None = None):
    from .trainer import train

    return train(parse_config(argv))
