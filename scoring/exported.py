"""Load an exported next-reuse model and score feature vectors with it.

An export is a folder with ``model.txt`` (LightGBM text model) and ``spec.json`` (feature
names and order, feature-set version, label transform, vocabularies, idle-time statistics;
see :mod:`cachewise.train.model_spec`). :func:`load_exported` also accepts an MLflow model
URI (``models:/cachewise-reuse@champion``); only then is MLflow imported.

Loading never hands unchecked bytes to LightGBM's C++ parser (which crashes the process on a
truncated or damaged file instead of raising): the bytes must hash to the spec's
``model_sha256`` (written by ``cachewise train``, re-checked by ``cachewise export``), then
pass :func:`cachewise.scoring.model_text.check_model_text`. After loading, the spec's probe row
(``probe.features``) must predict ``probe.prediction`` (a finite number). Every failure is a
:class:`ModelLoadError`. Registry downloads are bounded by ``registry_timeout_s`` (wall
clock, retries included).

:meth:`ExportedModel.predict_one` scores one vector through LightGBM's single-row fast C API
(``LGBM_BoosterPredictForMatSingleRowFastInit`` once, then
``LGBM_BoosterPredictForMatSingleRowFast`` per call), which skips the per-call setup of
``Booster.predict``. One :class:`ExportedModel` must not be used from two threads at once
(the fast config holds one prediction buffer).

The remaining-work model (``remaining.txt`` beside ``spec.json``, spec section ``remaining``;
:mod:`cachewise.train.remaining`) is loaded with the same checks (hash, text check, probe) into
:attr:`ExportedModel.remaining`. It is optional: a spec without the section, or a missing or
damaged file, leaves it ``None`` with one warning (the next-reuse model still serves, and
the residency controller orders sessions as it does without a model).

The traffic certificate (``certificate.json`` beside ``spec.json``, written by ``cachewise export``;
:mod:`cachewise.replay.certify`) names the trace families on whose held-out validation sessions the
learned order measurably beat vLLM's LRU. It is optional and only ever read, never trusted blindly:
a missing file, one that is not the expected JSON, or one made for another model (its
``model_sha256`` differs from the spec's) certifies nothing, with one warning for the last two;
:attr:`ExportedModel.certified_families` is then empty and the online guard starts in vLLM's
order (:mod:`cachewise.runtime.guard`, "Certified traffic").
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from lightgbm.basic import _LIB

from cachewise.features.spec import FEATURE_NAMES, primary_class_name, spec_fields
from cachewise.scoring.idle import IdleConditioner
from cachewise.scoring.model_text import ModelTextError, check_model_text
from cachewise.scoring.registry import tracking_uri

MODEL_FILE = "model.txt"
SPEC_FILE = "spec.json"
REMAINING_FILE = "remaining.txt"
CERTIFICATE_FILE = "certificate.json"
SHA_KEY = "model_sha256"
PROBE_KEY = "probe"
#: Default wall-clock budget (s) of one registry download, retries included.
REGISTRY_TIMEOUT_S = 10.0
_PROBE_RTOL = 1e-9
_PREDICT_NORMAL = 0  # C_API_PREDICT_NORMAL
_DTYPE_FLOAT64 = 1  # C_API_DTYPE_FLOAT64


_CLASS_FIRST = FEATURE_NAMES.index("class_first")
_LOG = logging.getLogger(__name__)


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


class FastRow:
    """One booster's single-row fast predictor (module doc); not for two threads at once."""

    def __init__(self, booster: lgb.Booster, n_features: int, where: str) -> None:
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
        self._booster = booster  # the fast config refers to it
        self._out_len = ctypes.c_int64()
        self._out = ctypes.c_double()
        self._out_len_ref = ctypes.byref(self._out_len)
        self._out_ref = ctypes.byref(self._out)
        self._predict_fast = _LIB.LGBM_BoosterPredictForMatSingleRowFast

    def __call__(self, vec: np.ndarray) -> float:
        """The prediction for one float64 feature vector in spec order."""
        if vec.dtype != np.float64 or vec.shape != (self.n_features,) or not vec.flags.c_contiguous:
            vec = np.ascontiguousarray(vec, dtype=np.float64).reshape(self.n_features)
        if self._predict_fast(self._fast, ctypes.c_void_p(vec.ctypes.data), self._out_len_ref, self._out_ref):
            raise RuntimeError(_LIB.LGBM_GetLastError().decode())
        return self._out.value

    def __del__(self) -> None:
        fast = getattr(self, "_fast", None)
        if fast is not None and fast.value:
            _LIB.LGBM_FastConfigFree(fast)
            fast.value = None


def check_probe(predict: Any, probe: dict, n_features: int, where: str) -> None:
    """``probe``'s row must predict its recorded value (a zero row: any finite value)."""
    try:
        row = np.asarray(probe.get("features", [0.0] * n_features), dtype=np.float64)
        expected = float(probe.get("prediction", math.nan))
        got = predict(row)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{where}: cannot score the probe row: {exc}") from exc
    if not math.isfinite(got):
        raise ModelLoadError(f"{where}: the model predicts {got} for the probe row (non-finite output)")
    if math.isfinite(expected) and not math.isclose(got, expected, rel_tol=_PROBE_RTOL, abs_tol=1e-12):
        raise ModelLoadError(f"{where}: the model predicts {got!r} for the probe row, its spec recorded {expected!r}")


class RemainingModel:
    """The remaining-work model (module doc): ``predict_one(vec)`` is ``log1p`` of the seconds the
    session runs after the call; ``new_session_label`` the label of a session with no finished call."""

    def __init__(self, booster: lgb.Booster, section: dict[str, Any], n_features: int, where: str) -> None:
        if booster.num_feature() != n_features:
            raise ModelLoadError(f"{where}: remaining-work model has {booster.num_feature()} features, spec lists {n_features}")
        try:
            self.new_session_label = float(section["new_session_label"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{where}: spec remaining.new_session_label missing or not a number") from exc
        if not math.isfinite(self.new_session_label):
            raise ModelLoadError(f"{where}: spec remaining.new_session_label is {self.new_session_label}")
        self.predict_one = FastRow(booster, n_features, where)
        self.source = where
        check_probe(self.predict_one, section.get(PROBE_KEY) or {}, n_features, where)


def load_remaining(spec: dict[str, Any], folder: Path, n_features: int) -> RemainingModel | None:
    """The remaining-work model named by ``spec`` in ``folder``; None (one warning) when there is none
    that loads (module doc)."""
    section = spec.get("remaining")
    if not isinstance(section, dict):
        return None
    path = folder / REMAINING_FILE
    try:
        if not path.is_file():
            raise ModelLoadError(f"{path}: missing (the spec names a remaining-work model)")
        if not isinstance(section.get(SHA_KEY), str):
            raise ModelLoadError(f"{path}: the spec's remaining section has no {SHA_KEY}")
        text = read_model_text(path, section[SHA_KEY])
        try:
            booster = lgb.Booster(model_str=text)
        except (lgb.basic.LightGBMError, ValueError) as exc:
            raise ModelLoadError(f"{path}: not a LightGBM model: {exc}") from exc
        return RemainingModel(booster, section, n_features, str(path))
    except ModelLoadError as exc:
        _LOG.warning("cachewise: no remaining-work model, sessions are admitted as without a model: %s", exc)
        return None


class ExportedModel:
    """A loaded model: LightGBM booster, its spec, and the idle conditioner of its predictions;
    :attr:`remaining` the optional remaining-work model and :attr:`certified_families` the
    families its traffic certificate names (module doc)."""

    def __init__(self, booster: lgb.Booster, spec: dict[str, Any], where: str) -> None:
        check_spec(spec, where)
        n_features = len(spec["feature_names"])
        if booster.num_feature() != n_features:
            raise ModelLoadError(f"{where}: model has {booster.num_feature()} features, spec lists {n_features}")
        try:
            self.conditioner = IdleConditioner(tuple(spec["residual_quantiles"]["model"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{where}: spec has no valid residual_quantiles.model: {exc}") from exc
        self.reference = _reference_of(spec)
        self.booster = booster
        self.spec = spec
        self.source = where
        self.n_features = n_features
        self._row = FastRow(booster, n_features, where)
        self.remaining: RemainingModel | None = None
        self.certified_families: frozenset[str] = frozenset()
        check_probe(self.predict_one, self.spec.get(PROBE_KEY) or {}, n_features, where)

    def predict_one(self, vec: np.ndarray) -> float:
        """Predicted label (``log1p`` idle seconds) of one float64 feature vector in spec order."""
        return self._row(vec)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Predicted labels of a 2-D feature matrix (rows in spec order)."""
        return np.asarray(self.booster.predict(np.asarray(matrix, dtype=np.float64)), dtype=np.float64)

    def reference_label(self, vec: np.ndarray) -> float | None:
        """The no-model label of one feature vector: the training mean log gap of its primary tool
        class (spec ``baselines.per_class_mean``; the overall mean for a class it lacks), to pair with
        :attr:`reference`'s residual quantiles; None when the spec has no baselines."""
        if self.reference is None:
            return None
        means, constant, _ = self.reference
        return means.get(primary_class_name(int(vec[_CLASS_FIRST])), constant)

    def expected_gap_one(self, pred_label: float, elapsed_s: float) -> float:
        """Idle seconds expected for a prefix already idle ``elapsed_s`` (see :mod:`cachewise.scoring.idle`)."""
        return self.conditioner.expected_gap_one(pred_label, elapsed_s)


def _reference_of(spec: dict[str, Any]) -> tuple[dict[str, float], float, IdleConditioner] | None:
    """``(per_class_mean, constant, per_tool_mean conditioner)`` of the spec; None when absent or invalid
    (an export that predates them: the forecast judge then has no reference and never trusts the model)."""
    try:
        baselines = spec["baselines"]
        means = {str(k): float(v) for k, v in baselines["per_class_mean"].items()}
        return means, float(baselines["constant"]), IdleConditioner(tuple(spec["residual_quantiles"]["per_tool_mean"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _check(rc: int, where: str) -> None:
    if rc != 0:
        raise ModelLoadError(f"{where}: LightGBM: {_LIB.LGBM_GetLastError().decode()}")


def model_sha256(text: str) -> str:
    """Hex sha256 of a model text's UTF-8 bytes (the spec's ``model_sha256``)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def probe_of(booster: lgb.Booster, row: np.ndarray) -> dict[str, Any]:
    """The spec's ``probe`` entry: ``row`` and ``booster``'s prediction for it."""
    row = np.asarray(row, dtype=np.float64).reshape(1, -1)
    return {"features": [float(v) for v in row[0]], "prediction": float(booster.predict(row)[0])}


def write_export(folder: Path, booster: lgb.Booster, spec: dict[str, Any]) -> None:
    """Write ``booster`` and ``spec`` (plus the model's ``model_sha256``) as an export folder, atomically per file."""
    from cachewise.atomic_write import write_text  # noqa: PLC0415 - writers only

    text = booster.model_to_string()
    write_text(Path(folder) / MODEL_FILE, text)
    write_text(Path(folder) / SPEC_FILE, json.dumps({**spec, SHA_KEY: model_sha256(text)}))


def read_model_text(model_file: Path, expected_sha256: str | None) -> str:
    """The checked text of ``model_file`` (module doc); ``expected_sha256`` None skips only the hash."""
    try:
        data = model_file.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{model_file}: cannot read: {exc.strerror or exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise ModelLoadError(
            f"{model_file}: sha256 {digest[:12]}... differs from the spec's {SHA_KEY} {str(expected_sha256)[:12]}..."
            " (damaged or replaced model file); re-export the model"
        )
    try:
        text = data.decode("utf-8")
        check_model_text(text)
    except (UnicodeDecodeError, ModelTextError) as exc:
        raise ModelLoadError(f"{model_file}: not a LightGBM model: {exc}") from exc
    return text


def read_spec(spec_file: Path) -> dict[str, Any]:
    """The JSON object in ``spec_file``."""
    try:
        spec = json.loads(spec_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{spec_file}: not a readable JSON spec: {exc}") from exc
    if not isinstance(spec, dict):
        raise ModelLoadError(f"{spec_file}: spec is not a JSON object")
    return spec


def load_folder(model_file: Path, spec_file: Path, where: str) -> ExportedModel:
    """Load a model from a LightGBM text file and a spec JSON file (checked first, module doc)."""
    for path in (model_file, spec_file):
        if not path.is_file():
            raise ModelLoadError(f"{where}: missing {path}")
    spec = read_spec(spec_file)
    if not isinstance(spec.get(SHA_KEY), str):
        raise ModelLoadError(f"{spec_file}: no {SHA_KEY} (exported by an older version); re-run `cachewise export`")
    text = read_model_text(model_file, spec[SHA_KEY])
    try:
        booster = lgb.Booster(model_str=text)
    except (lgb.basic.LightGBMError, ValueError) as exc:
        raise ModelLoadError(f"{model_file}: not a LightGBM model: {exc}") from exc
    model = ExportedModel(booster, spec, where)
    model.remaining = load_remaining(spec, spec_file.parent, model.n_features)
    model.certified_families = read_certificate(spec_file.parent / CERTIFICATE_FILE, spec[SHA_KEY])
    return model


def read_certificate(path: Path, model_sha: str) -> frozenset[str]:
    """The certified families of the traffic certificate at ``path`` for the model hashing to
    ``model_sha`` (module doc); empty when absent, unreadable or made for another model."""
    if not path.is_file():
        return frozenset()
    try:
        doc = json.loads(path.read_text())
        if doc.get(SHA_KEY) != model_sha:
            _LOG.warning("%s: made for another model (%s is not the spec's); no family certified", path, SHA_KEY)
            return frozenset()
        families = doc["families"]
        return frozenset(str(name) for name, entry in families.items() if entry["certified"] is True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        _LOG.warning("%s: not a readable traffic certificate (%s); no family certified", path, exc)
        return frozenset()


def trial_load(model_file: Path, timeout_s: float = 120.0) -> None:
    """Load ``model_file`` with LightGBM in a child process; :class:`ModelLoadError` if it fails or crashes.

    For writers (``cachewise export``) before they publish a file whose hash they record:
    whatever LightGBM does with it happens outside this process.
    """
    code = "import sys, lightgbm; lightgbm.Booster(model_file=sys.argv[1]).num_trees()"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(model_file)], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ModelLoadError(f"{model_file}: LightGBM did not load it within {timeout_s:g} s") from exc
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ModelLoadError(f"{model_file}: LightGBM cannot load it (exit status {done.returncode}: {tail})")


def _load_mlflow(uri: str, timeout_s: float) -> ExportedModel:
    """Download an MLflow-logged model (``mlflow.lightgbm`` flavor, spec in its extra files) within ``timeout_s``."""
    with tempfile.TemporaryDirectory(prefix="cachewise-model-") as tmp:
        local = download_model(uri, Path(tmp), timeout_s)
        return load_folder(local / "model.lgb", local / "extra_files" / SPEC_FILE, uri)


def download_model(uri: str, dst: Path, timeout_s: float) -> Path:
    """Download ``uri`` from the registry of :func:`cachewise.scoring.registry.tracking_uri` into ``dst``.

    Gives up with :class:`ModelLoadError` after ``timeout_s`` seconds (wall clock); MLflow's
    own HTTP retries are cut to fit that budget. Never creates a registry: a ``sqlite:///``
    store whose file does not exist is an error.
    """
    store = tracking_uri()
    db = _sqlite_file(store)
    if db is not None and not db.is_file():
        raise ModelLoadError(f"{uri}: no MLflow registry at {db} (set MLFLOW_TRACKING_URI, or run from the pipeline folder)")
    outcome: dict[str, Any] = {}
    worker = threading.Thread(
        target=_download, args=(uri, store, str(dst), timeout_s, outcome), name="cachewise-registry", daemon=True
    )
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise ModelLoadError(f"{uri}: the MLflow registry ({store}) did not answer within {timeout_s:g} s")
    if "error" in outcome:
        exc = outcome["error"]
        raise ModelLoadError(f"{uri}: cannot download from MLflow ({store}): {type(exc).__name__}: {str(exc)[:300]}") from exc
    return outcome["path"]


def _sqlite_file(uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]) if uri.startswith(prefix) else None


_BUDGET_LOCK = threading.Lock()
_budget_saved: dict[str, str | None] = {}  # the values the first download in flight found (restored by the last)
_budget_users = 0  # downloads in flight


def _download(uri: str, store: str, dst: str, timeout_s: float, outcome: dict[str, Any]) -> None:
    """Thread body of :func:`download_model`: resolve ``uri`` in ``store`` and download it.

    Touches no MLflow global: ``models:/`` is resolved by a client bound to ``store``
    (:func:`_artifact_location`), and ``download_artifacts`` is given the store, so a
    download abandoned after its budget changes nothing another thread relies on. The only
    process state it sets is MLflow's HTTP retry budget (environment variables MLflow reads
    per request), reference-counted: set by the first download in flight, restored by the last.
    """
    import mlflow  # noqa: PLC0415 - only MLflow URIs need it

    _budget_enter(timeout_s)
    try:
        location = _artifact_location(uri, store) if uri.startswith("models:/") else uri
        outcome["path"] = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=dst, tracking_uri=store, registry_uri=store)
        )
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a bad URI or store
        outcome["error"] = exc
    finally:
        _budget_exit()


def _artifact_location(uri: str, store: str) -> str:
    """Where ``store`` keeps the artifacts of the ``models:/`` URI ``uri`` (name@alias, name/version,
    name/stage, or a logged model id), resolved by a client bound to ``store``.

    MLflow's own ``models:/`` resolution reads the *global* registry URI whatever
    ``download_artifacts`` is told, so it is done here with MLflow's parser and a bound client.
    """
    from mlflow import MlflowClient  # noqa: PLC0415
    from mlflow.store.artifact.utils.models import get_model_name_and_version  # noqa: PLC0415

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    found = get_model_name_and_version(client, uri)
    if len(found) == 1:
        return str(client.get_logged_model(found[0]).artifact_location)
    name, version = found
    return str(client.get_model_version_download_uri(name, str(version)))


def _budget_enter(timeout_s: float) -> None:
    """Cut MLflow's HTTP retries to fit ``timeout_s`` while this download runs (see :func:`_download`)."""
    budget = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_s / 2))),
    }
    global _budget_users, _budget_saved  # noqa: PLW0603 - process-wide, like the variables it guards
    with _BUDGET_LOCK:
        if _budget_users == 0:
            _budget_saved = {key: os.environ.get(key) for key in budget}
        _budget_users += 1
        os.environ.update(budget)


def _budget_exit() -> None:
    """End one download's budget; the last one in flight restores the values the first one found."""
    global _budget_users  # noqa: PLW0603
    with _BUDGET_LOCK:
        _budget_users -= 1
        if _budget_users:
            return
        for key, value in _budget_saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_exported(path_or_uri: str | Path, registry_timeout_s: float | None = None) -> ExportedModel:
    """Load an export folder, or an MLflow ``models:/`` / ``runs:/`` URI (module doc).

    ``registry_timeout_s``: wall-clock budget of a registry download (None: :data:`REGISTRY_TIMEOUT_S`).
    """
    text = str(path_or_uri)
    if text.startswith(("models:/", "runs:/")):
        return _load_mlflow(text, REGISTRY_TIMEOUT_S if registry_timeout_s is None else registry_timeout_s)
    folder = Path(path_or_uri)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: no such model folder")
    return load_folder(folder / MODEL_FILE, folder / SPEC_FILE, str(folder))
