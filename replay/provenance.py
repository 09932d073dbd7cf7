"""Which tasks an exported model may be replayed on: never one it was trained on.

The exported ``spec.json`` (:mod:`cachewise.train.model_spec`) lists, under
``training_data.test_tasks``, the tasks its training held out. Every other task of its
training events may have been trained on (or used for early stopping), and a model exported
from other events (another split, the synthetic corpus; ``events_sha256`` differs) may have
seen any task. So the rule is the same in both cases: a replayed task must be one of the
spec's ``test_tasks``. ``allow_train_tasks`` lifts the refusal; the report then says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class ProvenanceError(ValueError):
    """The replay would score the learned model on tasks it may have been trained on."""


def held_out_tasks(spec: Mapping[str, Any], where: str) -> set[str]:
    """The spec's ``training_data.test_tasks``; raises :class:`ProvenanceError` when absent."""
    tasks = (spec.get("training_data") or {}).get("test_tasks")
    if not isinstance(tasks, list):
        raise ProvenanceError(
            f"{where}: spec.json has no training_data.test_tasks, so the tasks the model was trained on are unknown;"
            " re-export the model, or pass --allow-train-tasks"
        )
    return {str(t) for t in tasks}


def check_replayable(spec: Mapping[str, Any], where: str, tasks: Iterable[str]) -> None:
    """Raise :class:`ProvenanceError` naming the tasks of ``tasks`` that the model was not held out on."""
    held_out = held_out_tasks(spec, where)
    seen = sorted({str(t) for t in tasks} - held_out)
    if seen:
        raise ProvenanceError(
            f"{where}: the learned model may have been trained on {len(seen)} of the replayed tasks"
            f" (not in its spec's training_data.test_tasks), e.g. {seen[:3]}; replay its held-out tasks"
            " (split: test with the same train split), or pass --allow-train-tasks to replay them anyway"
        )
