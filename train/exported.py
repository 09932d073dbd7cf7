"""Load an exported next-reuse model and score feature vectors with it.

An export is a folder with ``model.txt`` (LightGBM text model) and ``spec.json`` (feature
names and order, feature-set version, label transform, vocabularies, idle-time statistics;
see :mod:`cachewise.train.model_spec`). :func:`load_exported` also accepts an MLflow model
URI (``models:/cachewise-reuse@champion``); only then is MLflow imported.

:meth:`ExportedModel.predict_one` scores one vector through LightGBM's single-row fast C API
(``LGBM_BoosterPredictForMatSingleRowFastInit`` once, then
``LGBM_BoosterPredictForMatSingleRowFast`` per call), which skips the per-call setup of
``Booster.predict``. One :class:`ExportedModel` must not be used from two threads at once
(the fast config holds one prediction buffer).
"""

from __future__ import annotations

import ctypes
import json
import tempfile
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from lightgbm.basic import _LIB

from cachewise.features.spec import spec_fields
from cachewise.train.idle import IdleConditioner

MODEL_FILE = "model.txt"
SPEC_FILE = "spec.json"
_PREDICT_NORMAL = 0  # C_API_PREDICT_NORMAL
_DTYPE_FLOAT64 = 1  # C_API_DTYPE_FLOAT64


class ModelLoadError(RuntimeError):
    """An exported model is missing, corrupt, or made for another feature set."""


def check_spec(spec: dict[str, Any], where: str) -> None:
    """Raise :class:`ModelLoadError` unless ``spec`` matches this code's feature set."""
    expected = spec_fields()
    for key in ("feature_set_version", "feature_names", "categorical", "vocabularies", "label_transform"):
        if spec.get(key) != expected[key]:
            raise ModelLoadError(
                f"{where}: {key} {spec.get(key)!r:.120} does not match this code's {expected[key]!r:.120}"
                f" (feature set version {expected['feature_set_version']}); re-train and re-export the model"
            )


class ExportedModel:
    """A loaded model: LightGBM booster, its spec, and the idle conditioner of its predictions."""

    def __init__(self, booster: lgb.Booster, spec: dict[str, Any], where: str) -> None:
        check_spec(spec, where)
        n_features = len(spec["feature_names"])
        if booster.num_feature() != n_features:
            raise ModelLoadError(f"{where}: model has {booster.num_feature()} features, spec lists {n_features}")
        try:
            self.conditioner = IdleConditioner(tuple(spec["residual_quantiles"]["model"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{where}: spec has no valid residual_quantiles.model: {exc}") from exc
        self.booster = booster
        self.spec = spec
        self.source = where
        self.n_features = n_features
        self._fast = ctypes.c_void_p()
        _check(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(_PREDICT_NORMAL),
                ctypes.c_int(0),
                ctypes.c_int(-1),
                ctypes.c_int(_DTYPE_FLOAT64),
                ctypes.c_int32(n_features),
                ctypes.c_char_p(b"num_threads=1"),
                ctypes.byref(self._fast),
            ),
            where,
        )
        self._out_len = ctypes.c_int64()
        self._out = ctypes.c_double()
        self._out_len_ref = ctypes.byref(self._out_len)
        self._out_ref = ctypes.byref(self._out)
        self._predict_fast = _LIB.LGBM_BoosterPredictForMatSingleRowFast

    def __del__(self) -> None:
        fast = getattr(self, "_fast", None)
        if fast is not None and fast.value:
            _LIB.LGBM_FastConfigFree(fast)
            fast.value = None

    def predict_one(self, vec: np.ndarray) -> float:
        """Predicted label (``log1p`` idle seconds) of one float64 feature vector in spec order."""
        if vec.dtype != np.float64 or vec.shape != (self.n_features,) or not vec.flags.c_contiguous:
            vec = np.ascontiguousarray(vec, dtype=np.float64).reshape(self.n_features)
        if self._predict_fast(self._fast, ctypes.c_void_p(vec.ctypes.data), self._out_len_ref, self._out_ref):
            raise RuntimeError(_LIB.LGBM_GetLastError().decode())
        return self._out.value

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Predicted labels of a 2-D feature matrix (rows in spec order)."""
        return np.asarray(self.booster.predict(np.asarray(matrix, dtype=np.float64)), dtype=np.float64)

    def expected_gap_one(self, pred_label: float, elapsed_s: float) -> float:
        """Idle seconds expected for a prefix already idle ``elapsed_s`` (see :mod:`cachewise.train.idle`)."""
        return self.conditioner.expected_gap_one(pred_label, elapsed_s)


def _check(rc: int, where: str) -> None:
    if rc != 0:
        raise ModelLoadError(f"{where}: LightGBM: {_LIB.LGBM_GetLastError().decode()}")


def load_folder(model_file: Path, spec_file: Path, where: str) -> ExportedModel:
    """Load a model from a LightGBM text file and a spec JSON file."""
    for path in (model_file, spec_file):
        if not path.is_file():
            raise ModelLoadError(f"{where}: missing {path}")
    try:
        spec = json.loads(spec_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{spec_file}: not a readable JSON spec: {exc}") from exc
    if not isinstance(spec, dict):
        raise ModelLoadError(f"{spec_file}: spec is not a JSON object")
    try:
        booster = lgb.Booster(model_file=str(model_file))
    except (lgb.basic.LightGBMError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{model_file}: not a LightGBM model: {exc}") from exc
    return ExportedModel(booster, spec, where)


def _load_mlflow(uri: str) -> ExportedModel:
    """Download an MLflow-logged model (``mlflow.lightgbm`` flavor, spec in its extra files)."""
    import mlflow  # noqa: PLC0415 - only MLflow URIs need it

    from cachewise.train.tracking import tracking_uri  # noqa: PLC0415 - imports mlflow

    # Resolve against the documented store, never whatever URI this process last set
    # globally: MLflow resolves ``models:/`` through its global registry URI, whatever
    # download_artifacts is told, so set it for the download and restore it afterwards.
    store = tracking_uri()
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    with tempfile.TemporaryDirectory(prefix="cachewise-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a bad URI
            raise ModelLoadError(f"{uri}: cannot download from MLflow ({store}): {exc}") from exc
        finally:
            mlflow.set_tracking_uri(previous[0])
            mlflow.set_registry_uri(previous[1])
        return load_folder(local / "model.lgb", local / "extra_files" / SPEC_FILE, uri)


def load_exported(path_or_uri: str | Path) -> ExportedModel:
    """Load an export folder, or an MLflow ``models:/`` / ``runs:/`` URI (module doc)."""
    text = str(path_or_uri)
    if text.startswith(("models:/", "runs:/")):
        return _load_mlflow(text)
    folder = Path(path_or_uri)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: no such model folder")
    return load_folder(folder / MODEL_FILE, folder / SPEC_FILE, str(folder))
