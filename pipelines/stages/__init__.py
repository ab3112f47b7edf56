"""One module per ``tempstop`` sub-command (the table is ``tempstop_pipelines.cli.COMMANDS``),
plus helpers of several commands (splits, figures, gallery).

A command module defines ``register(parser)``: it adds the options and sets either
``job=<frozen dataclass>, run=<run(cfg, job, tags) -> int>`` (a stage dvc.yaml and the Prefect
flow both run: the flow builds the same job and calls ``run``) or ``main=<main(args) -> int>``.
The module's docstring is the command's ``--help`` description."""
