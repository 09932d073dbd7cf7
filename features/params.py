"""Read one section of ``params.yaml`` (the pipeline's only configuration file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ParamsError(ValueError):
    """params.yaml is missing, unreadable, or lacks a required key."""


def load_section(path: str | Path, section: str) -> dict[str, Any]:
    """The mapping under ``section`` in the YAML file at ``path``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ParamsError(f"{path}: cannot read params: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get(section), dict):
        raise ParamsError(f"{path}: no `{section}:` section")
    return data[section]


def require(section: dict[str, Any], key: str, where: str) -> Any:
    """``section[key]``, or a :class:`ParamsError` naming ``where`` (e.g. ``params.yaml:train``)."""
    if key not in section:
        raise ParamsError(f"{where}: missing key `{key}`")
    return section[key]


def param_path(params_file: str | Path, value: str | Path) -> Path:
    """A path named in the params file, relative to that file's folder (as ``cachewise ingest`` reads it)."""
    return Path(params_file).resolve().parent / value
