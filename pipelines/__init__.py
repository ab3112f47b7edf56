"""Pipeline side of TempMe-STOP: the `tempstop` CLI, DVC stage entry points, tracking, Prefect flows.

Everything with side effects (argument parsing, MLflow, files of reports) lives here; the
library in ``src/tempstop`` stays pure.
"""
