"""Check a LightGBM text model before LightGBM's C++ parser sees it.

LightGBM trusts its input: a truncated file (``tree_sizes`` pointing past the end) crashes
the process with SIGSEGV, a byte missing inside a tree with SIGABRT, and a child index out
of range would crash at prediction. :func:`check_model_text` re-derives, in Python, every
structural fact the parser and the predictor rely on and raises :class:`ModelTextError`
naming the first one that does not hold:

* header: first line ``tree``; ``version``, ``num_class=1``, ``num_tree_per_iteration=1``,
  ``max_feature_idx`` agreeing with ``feature_names`` and ``feature_infos``; ``tree_sizes``;
* the ``tree_sizes`` table against the trees: tree ``i`` starts exactly at the sum of the
  earlier sizes with ``Tree=i``, and the trees end exactly at ``end of trees``;
* each tree: every field the parser reads, with the length ``num_leaves`` or
  ``num_leaves - 1`` requires; numbers in C syntax (no ``nan``/``inf`` where a value is
  used: leaf values, thresholds, shrinkage); split features within ``max_feature_idx``;
  children forming one tree over all nodes (each node reached once from the root);
  categorical splits within ``cat_boundaries`` / ``cat_threshold``; no linear trees;
* trailer: ``feature_importances`` lines ``name=integer``, every parameter line ``[key: value]``
  (LightGBM crashes on a parameter line without ``: ``), ``end of parameters`` and a JSON
  ``pandas_categorical`` line.

The exported spec's ``model_sha256`` (checked first, :mod:`cachewise.scoring.exported`)
catches every change to the bytes; this check stands behind it for files whose checksum
was recorded after they were damaged. Linear in the file size; pure Python (measured: 15 ms
for a 94-tree, 270 kB model; 140 ms for a 400-tree, 1.1 MB one).
"""

from __future__ import annotations

import json
import math
import re

_INT = re.compile(r"-?\d{1,18}")
_INT_LIST = re.compile(r"-?\d{1,18}(?: -?\d{1,18})*")
_FLOAT_PATTERN = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_FLOAT_LIST = re.compile(f"{_FLOAT_PATTERN}(?: {_FLOAT_PATTERN})*")
_HEADER_KEYS = (
    "version",
    "num_class",
    "num_tree_per_iteration",
    "label_index",
    "max_feature_idx",
    "feature_names",
    "feature_infos",
    "tree_sizes",
)
_INTERNAL_INT = ("split_feature", "decision_type", "left_child", "right_child", "internal_count")
_INTERNAL_FLOAT = ("split_gain", "threshold", "internal_value", "internal_weight")
_LEAF = ("leaf_value", "leaf_weight", "leaf_count")
_PARAMETER = re.compile(r"\[[A-Za-z0-9_]+: [^\[\]\n]*\]")
_TRAILER = re.compile(
    r"end of trees\n\nfeature_importances:\n(?P<importances>(?:[^\n]+\n)*)\n"
    r"parameters:\n(?P<parameters>(?:[^\n]+\n)*)\n?end of parameters\n\n"
    r"pandas_categorical:(?P<categorical>[^\n]*)\n?"
)
_CATEGORICAL_BIT = 1
_MAX_MISSING_TYPE = 2


class ModelTextError(ValueError):
    """The text is not a LightGBM model this code can load safely."""


def check_model_text(text: str) -> int:
    """Raise :class:`ModelTextError` unless ``text`` is structurally sound (module doc); return the tree count."""
    head, sep, body = text.partition("\n\n")
    if not sep:
        raise ModelTextError("no blank line after the header (truncated?)")
    header = _header(head)
    n_features = _int(header["max_feature_idx"], "max_feature_idx") + 1
    for key in ("feature_names", "feature_infos"):
        if len(header[key].split(" ")) != n_features:
            raise ModelTextError(f"{key} lists {len(header[key].split(' '))} features, max_feature_idx says {n_features}")
    for key in ("num_class", "num_tree_per_iteration"):
        if header[key] != "1":
            raise ModelTextError(f"{key}={header[key]!r}: only single-output models are served")
    sizes = [_int(s, "tree_sizes") for s in header["tree_sizes"].split(" ")] if header["tree_sizes"] else []
    offset = 0
    for index, size in enumerate(sizes):
        if size <= 0 or offset + size > len(body):
            raise ModelTextError(f"tree_sizes: tree {index} ({size} bytes at {offset}) runs past the end of the file")
        _check_tree(body[offset : offset + size], index, n_features)
        offset += size
    rest = body[offset:]
    if not rest.startswith("end of trees\n"):
        raise ModelTextError(f"tree_sizes do not end at `end of trees` (after {len(sizes)} trees)")
    _check_trailer(rest)
    return len(sizes)


def _header(head: str) -> dict[str, str]:
    lines = head.split("\n")
    if lines[0] != "tree":
        raise ModelTextError("does not start with `tree`")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        key, eq, value = line.partition("=")
        if not eq and line != "average_output":
            raise ModelTextError(f"header line {line[:40]!r} is not key=value")
        fields[key] = value
    missing = [k for k in _HEADER_KEYS if k not in fields]
    if missing:
        raise ModelTextError(f"header lacks {missing}")
    return fields


def _check_tree(chunk: str, index: int, n_features: int) -> None:
    where = f"tree {index}"
    if not chunk.startswith(f"Tree={index}\n") or not chunk.endswith("\n\n"):
        raise ModelTextError(f"{where}: tree_sizes do not match the trees (no `Tree={index}` block at its offset)")
    fields: dict[str, str] = {}
    for line in chunk.split("\n")[1:]:
        if not line:
            continue
        key, eq, value = line.partition("=")
        if not eq or key in fields:
            raise ModelTextError(f"{where}: malformed line {line[:40]!r}")
        fields[key] = value
    get = _Fields(fields, where)
    leaves = get.int("num_leaves")
    n_cat = get.int("num_cat")
    if leaves < 1 or n_cat < 0:
        raise ModelTextError(f"{where}: num_leaves={leaves}, num_cat={n_cat}")
    if get.int("is_linear") != 0:
        raise ModelTextError(f"{where}: linear trees are not served")
    get.finite_floats("shrinkage", 1)
    get.finite_floats("leaf_value", leaves)
    if leaves == 1:
        return
    get.floats("leaf_weight", leaves)
    get.ints("leaf_count", leaves)
    ints = {k: get.ints(k, leaves - 1) for k in _INTERNAL_INT}
    for k in _INTERNAL_FLOAT:
        get.floats(k, leaves - 1)
    threshold = get.finite_floats("threshold", leaves - 1)
    if any(not 0 <= f < n_features for f in ints["split_feature"]):
        raise ModelTextError(f"{where}: split_feature outside 0..{n_features - 1}")
    _check_shape(ints["left_child"], ints["right_child"], leaves, where)
    categorical = [i for i, d in enumerate(ints["decision_type"]) if d & _CATEGORICAL_BIT]
    if any(not 0 <= d < 256 or (d >> 2) & 3 > _MAX_MISSING_TYPE for d in ints["decision_type"]):
        raise ModelTextError(f"{where}: decision_type out of range")
    if n_cat == 0:
        if categorical:
            raise ModelTextError(f"{where}: categorical split with num_cat=0")
        return
    bounds = get.ints("cat_boundaries", n_cat + 1)
    if bounds[0] != 0 or any(b > a for b, a in zip(bounds, bounds[1:])):
        raise ModelTextError(f"{where}: cat_boundaries not increasing from 0")
    get.ints("cat_threshold", bounds[-1])
    for node in categorical:
        t = threshold[node]
        if t != int(t) or not 0 <= int(t) < n_cat:
            raise ModelTextError(f"{where}: categorical split {node} points outside cat_boundaries")


def _check_shape(left: list[int], right: list[int], leaves: int, where: str) -> None:
    """Every internal node and leaf is reached exactly once from node 0 (a tree, no cycle)."""
    seen_nodes, seen_leaves = [False] * (leaves - 1), [False] * leaves
    stack = [0]
    while stack:
        node = stack.pop()
        if seen_nodes[node]:
            raise ModelTextError(f"{where}: node {node} reached twice")
        seen_nodes[node] = True
        for child in (left[node], right[node]):
            if child >= 0:
                if child >= leaves - 1:
                    raise ModelTextError(f"{where}: child {child} out of range")
                stack.append(child)
            else:
                leaf = ~child
                if leaf >= leaves or seen_leaves[leaf]:
                    raise ModelTextError(f"{where}: leaf {leaf} out of range or reached twice")
                seen_leaves[leaf] = True
    if not all(seen_nodes) or not all(seen_leaves):
        raise ModelTextError(f"{where}: nodes unreachable from the root")


def _check_trailer(rest: str) -> None:
    """``end of trees``, feature importances, ``[key: value]`` parameters, ``pandas_categorical``."""
    match = _TRAILER.fullmatch(rest)
    if match is None:
        raise ModelTextError("the sections after the trees are not feature_importances, parameters, pandas_categorical")
    for line in match["importances"].splitlines():
        name, eq, value = line.partition("=")
        if not eq or not name or not _INT.fullmatch(value):
            raise ModelTextError(f"feature importance line {line[:40]!r} is not name=integer")
    for line in match["parameters"].splitlines():
        if not _PARAMETER.fullmatch(line):
            raise ModelTextError(f"parameter line {line[:40]!r} is not [key: value]")
    try:
        json.loads(match["categorical"])
    except ValueError as exc:
        raise ModelTextError(f"pandas_categorical is not JSON: {exc}") from exc


class _Fields:
    """Typed access to one tree's ``key=value`` fields; every miss is a :class:`ModelTextError`."""

    def __init__(self, fields: dict[str, str], where: str) -> None:
        self.fields, self.where = fields, where

    def _values(self, key: str, n: int, syntax: re.Pattern[str]) -> list[str]:
        if key not in self.fields:
            raise ModelTextError(f"{self.where}: no {key}")
        text = self.fields[key]
        values = text.split(" ") if n else []
        if len(values) != n or (n == 0 and text):
            raise ModelTextError(f"{self.where}: {key} has {len(values)} values, expected {n}")
        if n and not syntax.fullmatch(text):  # one regex over the whole line: fast
            if any(v.lstrip("+-").lower() in ("nan", "inf", "infinity") for v in values):
                raise ModelTextError(f"{self.where}: {key} is not finite")
            raise ModelTextError(f"{self.where}: {key} holds a value that is not a number")
        return values

    def int(self, key: str) -> int:
        return self.ints(key, 1)[0]

    def ints(self, key: str, n: int) -> list[int]:
        return [int(v) for v in self._values(key, n, _INT_LIST)]

    def floats(self, key: str, n: int) -> None:
        self._values(key, n, _FLOAT_LIST)

    def finite_floats(self, key: str, n: int) -> list[float]:
        values = [float(v) for v in self._values(key, n, _FLOAT_LIST)]
        if not all(map(math.isfinite, values)):  # overflowing exponents such as 1e999
            raise ModelTextError(f"{self.where}: {key} is not finite")
        return values


def _int(text: str, what: str) -> int:
    if not _INT.fullmatch(text):
        raise ModelTextError(f"{what}: {text[:20]!r} is not an integer")
    return int(text)
