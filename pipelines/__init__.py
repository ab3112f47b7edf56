"""Pipeline side of TempMe-STOP, the package ``tempstop_pipelines`` (the folder ``pipelines/``;
a project-specific name so that it cannot collide with another project's ``pipelines``).

Rooms: ``stages/`` (the ``tempstop`` command, one module per sub-command; dvc.yaml runs them),
``flows/`` (Prefect flows calling the same stage functions), ``training/`` (training runs with
tracking, torchrun), ``tracking/`` (MLflow, TensorBoard, provenance), ``fleet/`` (the team
stack, locks, crash recovery, data through a DVC remote), ``serve/`` (the search service).
Everything with side effects (argument parsing, MLflow, reports, servers) lives here; the
library in ``src/tempstop`` stays pure. Layers and rules: docs/ARCHITECTURE.md.
"""
