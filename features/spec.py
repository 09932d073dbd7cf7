"""The feature set: names, order, categorical vocabularies, version, label transform.

One dict, :data:`FEATURE_DOCS`, defines every feature (its order is the model's column
order) and documents it; :func:`features_markdown` renders it as the FEATURES table, kept
in ``features/FEATURES.md`` (``python -m cachewise.features.spec --markdown >
features/FEATURES.md`` writes it; a test fails when the two differ). The values are computed by
:class:`cachewise.features.online.FeatureState` from a
:class:`cachewise.features.record.FinishedCall` and the history of earlier calls, so
every feature is known when a response finishes: nothing comes from the tool's actual
run time, its result, or any later call.

Conventions: times in seconds; a *gap* is an observed idle time of an earlier call of
the thread (the next call's request time minus that call's finish time, clamped at 0);
a history feature with no history yet is NaN (LightGBM's missing value); "class" is
:func:`cachewise.data.commands.command_class`; argument facts are
:func:`cachewise.data.commands.argument_facts`, taken as the maximum over the
response's tool calls. Categorical features hold stable integer codes from the
vocabularies below (0 = none, 1 = a value outside the vocabulary).

Bump :data:`FEATURE_SET_VERSION` on any change to names, order, meaning or vocabularies;
an exported model refuses to load under another version.
"""

from __future__ import annotations

import argparse

from cachewise.data.commands import ARGUMENT_FACT_DOCS, COMMAND_CLASSES

FEATURE_SET_VERSION = "2"

LABEL_TRANSFORM = "log1p_seconds"
"""Name of the label transform (the target is ``log1p`` of idle seconds), stored in the exported spec."""

#: Model families recognised in a model identity string (first substring match wins).
MODEL_FAMILIES: tuple[str, ...] = ("haiku", "sonnet", "opus", "glm", "qwen", "gpt", "deepseek", "llama", "gemini")

#: Sentinel codes shared by every categorical vocabulary.
CODE_NONE = 0
CODE_OTHER = 1

#: Categorical vocabularies: value -> code (codes >= 2; 0 none, 1 other).
VOCABULARIES: dict[str, dict[str, int]] = {
    "command_class": {c: i + 2 for i, c in enumerate(COMMAND_CLASSES)},
    "model_family": {f: i + 2 for i, f in enumerate(MODEL_FAMILIES)},
}

#: Primary class name of a response without tool calls (the baselines' ``<none>`` class).
NO_CLASS = "<none>"
_CLASS_NAMES: dict[int, str] = {code: name for name, code in VOCABULARIES["command_class"].items()}


def primary_class_name(code: int) -> str:
    """The baselines' class name of a ``class_first`` code: :data:`NO_CLASS`, a command class, or ``other``."""
    return NO_CLASS if code == CODE_NONE else _CLASS_NAMES.get(code, "other")


#: Decay constants (s) of the thread's exponentially decayed request counters (LRB's EDCs).
EDC_TAUS_S: tuple[float, ...] = (10.0, 100.0, 1000.0)
#: Number of most recent gaps kept as separate features.
N_RECENT_GAPS = 3
#: Smoothing factor of the gap EWMA (weight of the newest gap).
GAP_EWMA_ALPHA = 0.3

_RESPONSE: dict[str, str] = {
    "class_first": "command class of the response's first tool call (0 = no tool call)",
    "class_last": "command class of the response's last tool call (0 = no tool call)",
    "n_tool_calls": "number of tool calls in the response",
    "n_distinct_classes": "number of distinct command classes among them",
    **{f"n_class_{c}": f"number of the response's tool calls of class `{c}`" for c in COMMAND_CLASSES},
    **{f"arg_{k}": f"{doc}; the maximum over the response's tool calls" for k, doc in ARGUMENT_FACT_DOCS.items()},
    "ended_turn": "1 if the response emitted no tool call (control goes back to the user)",
    "is_sidechain": "1 if the call belongs to a sub-agent thread",
    "model_family": "model family parsed from the model identity",
    "prompt_tokens": "prompt length of this call (tokens)",
    "prompt_growth": "prompt tokens minus the previous call's of the thread (NaN for the first call)",
    "output_tokens": "response length (tokens)",
    "llm_latency_s": "finish time minus request time of this call",
}
_THREAD: dict[str, str] = {
    "thread_calls": "number of earlier calls in the thread (its call index while the thread is tracked)",
    "thread_elapsed_s": "finish time minus the thread's first request time",
    "thread_tool_rate": "traffic kind: fraction of the thread's calls so far, this one included, whose response"
    " emitted a tool call (0 in chat traffic, near 1 in agent loops; known to training and serving alike,"
    " unlike the trace a call came from)",
    **{f"gap_{i}": f"gap number {i} of the thread, counting back from the latest (1)" for i in range(1, N_RECENT_GAPS + 1)},
    "gap_mean": "mean gap of the thread",
    "gap_max": "largest gap of the thread",
    "gap_ewma": f"exponentially weighted mean gap of the thread (alpha {GAP_EWMA_ALPHA})",
    "same_class_gap_last": "gap after the thread's last earlier call with the same first class",
    "same_class_gap_mean": "mean gap after the thread's earlier calls with the same first class",
    "same_class_count": "number of the thread's earlier calls with the same first class",
    **{f"edc_{int(t)}s": f"decayed count of the thread's earlier requests, sum of exp(-age/{int(t)} s) at finish" for t in EDC_TAUS_S},
}
_SESSION: dict[str, str] = {
    "session_calls": "number of earlier calls in the session (all threads)",
    "session_elapsed_s": "finish time minus the session's first request time",
    "session_class_gap_last": "gap after the session's last earlier call with the same first class (any thread)",
    "session_class_gap_mean": "mean gap after the session's earlier calls with the same first class (any thread)",
    "session_sig_gap_last": "gap after the session's last earlier call with the same signature"
    " (first class and all argument facts equal; e.g. the same test command run again)",
    "session_sig_count": "number of the session's earlier calls with the same signature",
}

FEATURE_DOCS: dict[str, str] = {**_RESPONSE, **_THREAD, **_SESSION}
_GROUP: dict[str, str] = {
    **dict.fromkeys(_RESPONSE, "response"),
    **dict.fromkeys(_THREAD, "thread"),
    **dict.fromkeys(_SESSION, "session"),
}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURE_DOCS)
#: Categorical features and the vocabulary each one's codes come from.
CATEGORICAL: dict[str, str] = {
    "class_first": "command_class",
    "class_last": "command_class",
    "model_family": "model_family",
}

__all__ = [
    "CATEGORICAL",
    "FEATURE_DOCS",
    "FEATURE_NAMES",
    "FEATURE_SET_VERSION",
    "LABEL_TRANSFORM",
    "VOCABULARIES",
    "features_markdown",
    "spec_fields",
]


def spec_fields() -> dict:
    """The feature-set part of an exported spec: what a loader checks against this code."""
    return {
        "feature_set_version": FEATURE_SET_VERSION,
        "feature_names": list(FEATURE_NAMES),
        "categorical": dict(CATEGORICAL),
        "vocabularies": {k: dict(v) for k, v in VOCABULARIES.items()},
        "label_transform": LABEL_TRANSFORM,
    }


def features_markdown() -> str:
    """The FEATURES table (``features/FEATURES.md``): one row per feature, in model column order."""
    lines = [
        f"# Features (feature set version {FEATURE_SET_VERSION}, label `{LABEL_TRANSFORM}`)",
        "",
        "<!-- Generated: python -m cachewise.features.spec --markdown > features/FEATURES.md"
        " (tests/test_features_doc.py fails when this file is stale). -->",
        "",
        "One row per column of the model input, in order. `FeatureState.observe` computes them when a"
        " response finishes, from that call (*response*) and the earlier calls of its thread (*thread*)"
        " and session (*session*): never from a tool's run time, its result or a later call. Times are"
        " in seconds; a *gap* is the idle time after an earlier call of the thread (the next call's"
        " request time minus that call's finish time, at least 0); NaN means no history yet."
        " Command classes and argument facts (`arg_*`, 0 without a tool call) come from"
        " `cachewise.data.commands`.",
        "",
        "| # | feature | group | type | description |",
        "|---|---|---|---|---|",
    ]
    for i, (name, doc) in enumerate(FEATURE_DOCS.items()):
        kind = f"categorical (`{CATEGORICAL[name]}`)" if name in CATEGORICAL else "numeric"
        description = doc.replace("|", "\\|")  # a pipe inside a table cell must be escaped
        lines.append(f"| {i} | `{name}` | {_GROUP[name]} | {kind} | {description} |")
    lines += ["", "Codes of the categorical features (0 = none, 1 = a value outside the vocabulary):", ""]
    for vocabulary, codes in VOCABULARIES.items():
        lines.append(f"* `{vocabulary}`: " + ", ".join(f"`{value}` {code}" for value, code in codes.items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m cachewise.features.spec --markdown``: print the FEATURES table."""
    parser = argparse.ArgumentParser(prog="python -m cachewise.features.spec", description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the FEATURES table (features/FEATURES.md)")
    args = parser.parse_args(argv)
    if not args.markdown:
        parser.error("nothing to print: pass --markdown")
    print(features_markdown(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
