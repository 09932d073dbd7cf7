"""The Dask cluster featurize and train run on (``train.backend: dask`` in params.yaml).

``train.dask`` settings: ``scheduler_address`` (``tcp://host:8786`` of a running
``dask scheduler``: the work goes to its workers, on any number of machines, which must
have this package installed and read the same paths, e.g. a shared file system) or null
for an in-process ``LocalCluster`` of ``n_workers`` worker processes with
``threads_per_worker`` threads and ``memory_limit`` each ("auto" = the machine's memory
split evenly); ``partitions``: how many session-disjoint partitions featurize makes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cachewise.features.params import ParamsError


@dataclass(frozen=True)
class DaskSettings:
    """``train.dask`` (module doc)."""

    scheduler_address: str | None = None
    n_workers: int = 2
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    partitions: int = 8

    @classmethod
    def from_params(cls, raw: dict[str, Any] | None, where: str) -> DaskSettings:
        raw = dict(raw or {})
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ParamsError(f"{where}: unknown train.dask keys {sorted(unknown)}")
        settings = cls(**raw)
        if settings.n_workers < 1 or settings.threads_per_worker < 1 or settings.partitions < 1:
            raise ParamsError(f"{where}: train.dask n_workers, threads_per_worker and partitions must be >= 1")
        return settings


def backend_of(tparams: dict[str, Any], where: str) -> str:
    """``train.backend``: ``local`` (default) or ``dask``."""
    backend = tparams.get("backend", "local")
    if backend not in ("local", "dask"):
        raise ParamsError(f"{where}: train.backend must be 'local' or 'dask', got {backend!r}")
    return backend


@contextmanager
def dask_client(settings: DaskSettings) -> Iterator[Any]:
    """A ``distributed.Client`` on the configured cluster (a LocalCluster closed on exit)."""
    from distributed import Client, LocalCluster

    if settings.scheduler_address:
        with Client(settings.scheduler_address) as client:
            yield client
        return
    with LocalCluster(
        n_workers=settings.n_workers,
        threads_per_worker=settings.threads_per_worker,
        memory_limit=settings.memory_limit,
        processes=True,
        dashboard_address=None,
    ) as cluster, Client(cluster) as client:
        yield client


def describe(client: Any) -> str:
    """``workers=N scheduler=ADDRESS`` of a client's cluster."""
    return f"workers={len(client.scheduler_info(n_workers=-1)['workers'])} scheduler={client.scheduler.address}"
