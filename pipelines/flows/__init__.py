"""Prefect orchestration of the TempMe-STOP pipeline.

``plan``     the stages as typed calls (the same as dvc.yaml's commands; no Prefect import)
``retrain``  the ``tempstop-retrain`` flow: stages as tasks, retries, final promotion
``extract``  the ``tempstop-extract`` flow: split extraction shard by shard, locally or on Ray
``index``    the ``tempstop-index`` flow: collection indexing shard by shard, locally or on Ray
``train_node`` the ``tempstop-train-node`` flow: one machine's torchrun node of a multi-machine run

Deployments (nightly retrain, on-demand joint run, re-index, training nodes) are declared in
prefect.yaml; docs/scaling.md shows the cluster commands.
"""
