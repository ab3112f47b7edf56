"""Running a team's fleet: the stack of shared servers (PostgreSQL, MLflow, Prefect), locks
every machine respects, crash recovery of training stages, data shared through a DVC remote,
Prefect deployment steps and events."""
