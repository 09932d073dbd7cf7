"""Where MLflow runs and registered models live.

The tracking URI is :func:`cachewise.scoring.registry.tracking_uri` (shared with the
runtime, which resolves ``models:/`` URIs without importing this package).
Runs go to the experiment :data:`EXPERIMENT`; when it is first created on a local SQLite
store, its artifacts are put next to the database (``<db folder>/mlartifacts``), never in
the current directory.
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from cachewise.scoring.registry import tracking_uri

__all__ = ["EXPERIMENT", "tracking_uri", "use_tracking"]

EXPERIMENT = "cachewise"


def _artifact_root(uri: str) -> str | None:
    """``<db folder>/mlartifacts`` for a ``sqlite:///`` file URI, else None (MLflow's default)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return (Path(uri[len(prefix):]).resolve().parent / "mlartifacts").as_uri()


def use_tracking() -> str:
    """Point MLflow at :func:`tracking_uri` and the :data:`EXPERIMENT`; return the experiment id."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        experiment_id = mlflow.create_experiment(EXPERIMENT, artifact_location=_artifact_root(uri))
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
