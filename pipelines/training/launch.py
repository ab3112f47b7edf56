"""``python -m tempstop_pipelines.training.launch RUN.json``: one process of a torchrun launch
(:func:`tempstop_pipelines.training.run.launch`).

Each process reads the same :class:`~tempstop_pipelines.training.run.TrainingRun` file and
trains its share.
"""

from __future__ import annotations

import sys

from tempstop_pipelines.env import configure_logging
from tempstop_pipelines.training.run import TrainingRun, error_message, run_training_from, training_errors


def main(argv: list[str] | None = None) -> int:
    """Train this process's share of the run in ``argv[0]``; the exit status (2: a user's error)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tempstop_pipelines.training.launch RUN.json", file=sys.stderr)
        return 2
    configure_logging()
    try:
        run_training_from(TrainingRun.from_json(argv[0]))
    except training_errors() as exc:
        print(f"tempstop train: {error_message(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
