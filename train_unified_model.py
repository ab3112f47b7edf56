#!/usr/bin/env python
"""Train the unified TempMe-STOP model (the user's guide entry point, docs/training.md).

    python train_unified_model.py --config configs/my_training_config.json --mode joint --seed 42
    python train_unified_model.py --config ... --mode joint --resume checkpoints/unified_model/checkpoint_epoch_10.pth

The config is JSON or YAML; a file with only a ``"training"`` section leaves every other
section at its default. Same options as ``tempstop train`` (``--set key=value``,
``--init-from``, ``--checkpoint-dir``, ``--epochs`` ...). Multi-GPU:
``torchrun --nproc_per_node 4 train_unified_model.py --config ...``.
"""

from __future__ import annotations

import argparse
import sys

from tempstop_pipelines.cli import main as cli_main
from tempstop_pipelines.stages.train import add_train_args


def main(argv: list[str] | None = None) -> int:
    """Check the options with this program's name, then run ``tempstop train`` with them."""
    parser = argparse.ArgumentParser(prog="train_unified_model.py", description=__doc__.split("\n\n")[0])
    add_train_args(parser)
    parser.parse_args(argv)  # --help and usage errors here, with this program's name
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
