"""Prefect orchestration of the TempMe-STOP pipeline.

``plan``     the stage commands (shared with dvc.yaml; no Prefect import)
``retrain``  the ``tempstop-retrain`` flow: stages as tasks, retries, final promotion

Deployments (nightly retrain, on-demand joint run) are declared in prefect.yaml.
"""
