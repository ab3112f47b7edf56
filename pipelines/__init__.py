"""Pipeline side of TempMe-STOP, installed as ``tempstop_pipelines`` (from the folder
``pipelines/``): the `tempstop` CLI, DVC stage entry points, training with tracking and
TensorBoard, Prefect flows, serving.

Everything with side effects (argument parsing, MLflow, files of reports) lives here; the
library in ``src/tempstop`` stays pure.
"""
