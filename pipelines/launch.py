"""``python -m <package>.launch RUN.json``: one process of a torchrun launch (:func:`launch`).

Each process reads the same :class:`~.training.TrainingRun` file and trains its share.
"""

from __future__ import annotations

import logging
import sys

from .training import TrainingRun, error_message, run_training_from, training_errors


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tempstop_pipelines.launch RUN.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_training_from(TrainingRun.from_json(argv[0]))
    except training_errors() as exc:
        print(f"tempstop train: {error_message(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
