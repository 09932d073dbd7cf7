"""Read one section of ``params.yaml`` (the pipeline's only configuration file).

Every key is checked against :data:`KNOWN_KEYS` when its section is read: an unknown key
(a typo such as ``train.bakend``) is a :class:`ParamsError` naming the file, the key and
the closest valid one — never silently ignored. ``train.lightgbm`` is LightGBM's own
parameter set (LightGBM warns about names it does not know) and ``replay`` is checked by
:mod:`cachewise.replay.config`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml


#: A section's keys; a nested mapping lists a sub-section's keys, ``FREE`` accepts any key.
FREE: dict[str, Any] = {}
KNOWN_KEYS: dict[str, dict[str, Any]] = {
    "ingest": {"sources": None, "out": None, "synthetic": {"seed": None, "sessions": None, "dir": None}},
    "features": {"out": None, "horizon_s": None, "max_threads": None, "max_sessions": None},
    "train": {
        "seed": None,
        "test_fraction": None,
        "valid_fraction": None,
        "lightgbm": FREE,
        "pairwise": {"max_pairs": None, "time_base": None},
        "backend": None,
        "dask": {"scheduler_address": None, "n_workers": None, "threads_per_worker": None, "memory_limit": None, "partitions": None},
    },
    "registry": {"model_name": None, "alias": None, "export_dir": None},
    "replay": FREE,
}


class ParamsError(ValueError):
    """params.yaml is missing, unreadable, lacks a required key or holds an unknown one."""


def check_keys(data: Any, known: dict[str, Any], where: str) -> None:
    """Raise :class:`ParamsError` for the first key of ``data`` not in ``known`` (recursively)."""
    if known is FREE or not isinstance(data, dict):
        return
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean `{close[0]}`?" if close else f"; valid keys: {', '.join(known)}"
            raise ParamsError(f"{where}: unknown key `{where.rsplit(':', 1)[-1]}.{key}`{hint}")
        if isinstance(known[key], dict):
            check_keys(value, known[key], f"{where}.{key}")


def load_section(path: str | Path, section: str) -> dict[str, Any]:
    """The mapping under ``section`` in the YAML file at ``path``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ParamsError(f"{path}: cannot read params: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get(section), dict):
        raise ParamsError(f"{path}: no `{section}:` section")
    check_keys(data[section], KNOWN_KEYS.get(section, FREE), f"{path}:{section}")
    return data[section]


def require(section: dict[str, Any], key: str, where: str) -> Any:
    """``section[key]``, or a :class:`ParamsError` naming ``where`` (e.g. ``params.yaml:train``)."""
    if key not in section:
        raise ParamsError(f"{where}: missing key `{key}`")
    return section[key]


def param_path(params_file: str | Path, value: str | Path) -> Path:
    """A path named in the params file, relative to that file's folder (as ``cachewise ingest`` reads it)."""
    return Path(params_file).resolve().parent / value
