"""Prefect deployment steps that run on the worker, when a flow run starts.

prefect.yaml's pull step ``set_working_directory: {directory: "{{ $TEMPSTOP_ROOT }}"}`` does
not do what it says: ``prefect deploy`` fills ``{{ $VAR }}`` in from the *deploying* shell, so
every worker ran its flows in the checkout of whoever deployed (found by the fleet test: two
workers, two checkouts, both runs in one). This step reads the variable on the worker.
"""

from __future__ import annotations

import os
from pathlib import Path

from tempstop_pipelines.env import telemetry_off


def chdir_to_checkout(variable: str = "TEMPSTOP_ROOT") -> dict[str, str]:
    """Change into the checkout named by the worker's ``variable`` (``make prefect-worker``
    sets it to its own checkout); returns ``{"directory": path}`` for later steps."""
    root = os.environ.get(variable)
    if not root:
        raise RuntimeError(f"{variable} is not set on this worker: start it with `make prefect-worker`, "
                           f"or export {variable}=<its checkout>")  # fmt: skip
    if not (Path(root) / "prefect.yaml").is_file():
        raise RuntimeError(f"{variable}={root} is not a checkout of this project (no prefect.yaml there)")
    os.chdir(root)
    return {"directory": root}


def switch_off_telemetry() -> dict[str, str]:
    """Set the telemetry switches of ``pipelines/telemetry.env`` in the flow run's process
    before its flow (and MLflow, DVC...) is imported: a worker started without the Makefile
    does not have them. Returns nothing for later steps."""
    telemetry_off()
    return {}
