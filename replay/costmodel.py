"""GPU time of one engine step, from coefficients measured on a real GPU.

The replay runs vLLM's scheduler without a GPU; this model says how long the GPU would
have taken for each scheduled step, and the replay's simulated clock advances by that.
Coefficients come from ``replay/measure_costs.py`` (a JSON file, path given by the
caller), per model shape::

    prefill_time(new, ctx) = a0 + a_tok * new + a_ctx * new * (ctx + new / 2)
    decode_step(batch, total_ctx) = b0 + b_seq * batch + b_ctx * total_ctx

A step that mixes prefill chunks and decodes (vLLM's chunked prefill) costs the sum of
each chunk's prefill time plus one decode step of the decoding requests.

Scaled replay (``token_scale`` s > 1): one replay token stands for s trace tokens, so one
replay step, in which every decoding request gains one replay token, stands for s real
engine steps, and its token budget is s real steps' budget (the engine's
``max_num_batched_tokens`` in replay tokens equals the real step's in trace tokens,
:meth:`cachewise.replay.config.EngineSettings.for_scale`). Such a step costs s decode steps
plus each prefill chunk as the real steps would have computed it: split into
``ceil(new x s / step_tokens)`` real chunks, each paying ``a0`` (the ``a_ctx`` term is exact
under any split: the chunks' ``new x (ctx + new / 2)`` sum to the whole chunk's). A request
whose prefill completes in the step samples one replay token, s trace tokens: the first from
its prefill, the other s - 1 from real decode steps it joins, so the step also costs s - 1
times what those requests add to the decode step. So decodes and prefills progress at their
real rates per simulated second, and a call of O output trace tokens costs the O - 1 decode
steps it does at token_scale 1 (on average: the output ends at a scaled position). At s = 1
a chunk never exceeds one step's budget, s - 1 = 0, and the step costs what the formulas
above say. (Approximations: the context grows by at most s tokens within the s steps; a
prefill that needs k > 1 real chunks delays its request's decodes by k - 1 steps, not charged.)

Invariant: every time is finite and >= 0 for non-negative inputs (coefficients are
checked non-negative on load).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

PREFILL_KEYS = ("a0", "a_tok", "a_ctx")
DECODE_KEYS = ("b0", "b_seq", "b_ctx")


class CostModelError(ValueError):
    """The coefficient file is missing, malformed, or lacks the requested shape."""


@dataclass(frozen=True)
class CostModel:
    """Step-time model of one model shape on one GPU (seconds, tokens)."""

    shape: str
    a0: float
    a_tok: float
    a_ctx: float
    b0: float
    b_seq: float
    b_ctx: float

    def prefill_time(self, new_tokens: int, context_tokens: int) -> float:
        """Seconds to prefill ``new_tokens`` tokens on top of ``context_tokens`` cached ones."""
        if new_tokens <= 0:
            return 0.0
        return self.a0 + self.a_tok * new_tokens + self.a_ctx * new_tokens * (context_tokens + new_tokens / 2)

    def decode_step(self, batch: int, total_context_tokens: int) -> float:
        """Seconds for one decode step of ``batch`` sequences holding ``total_context_tokens``."""
        if batch <= 0:
            return 0.0
        return self.b0 + self.b_seq * batch + self.b_ctx * total_context_tokens

    def step_time(
        self,
        prefill: list[tuple[int, int]],
        decode_ctx: list[int],
        token_scale: int,
        step_tokens: int,
        sampled_after_prefill_ctx: list[int],
    ) -> float:
        """Seconds of one replay step (``token_scale`` real engine steps), from replay-token counts.

        ``prefill``: ``(new, context)`` per prefilling request; ``decode_ctx``: context of each
        decoding request; ``step_tokens``: a real step's token budget in trace tokens;
        ``sampled_after_prefill_ctx``: context, after the step, of each request whose prefill
        completed in it. See the module doc. O(requests in the step).
        """
        s = token_scale
        seconds = 0.0
        for n, ctx in prefill:
            real_chunks = max(1, math.ceil(n * s / step_tokens))
            seconds += self.prefill_time(n * s, ctx * s) + (real_chunks - 1) * self.a0
        decoding = self.decode_step(len(decode_ctx), s * sum(decode_ctx))
        joined = self.decode_step(
            len(decode_ctx) + len(sampled_after_prefill_ctx), s * (sum(decode_ctx) + sum(sampled_after_prefill_ctx))
        )
        return seconds + s * decoding + (s - 1) * (joined - decoding)


def load_cost_model(path: str | Path, shape: str) -> CostModel:
    """Read the coefficients of ``shape`` from the JSON file at ``path``.

    Raises :class:`CostModelError` naming the file when it is absent, not JSON, lacks the
    shape, or holds a negative or non-finite coefficient.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CostModelError(
            f"{path}: cost coefficient file not found (written by replay/measure_costs.py)"
        ) from exc
    except json.JSONDecodeError as exc:
        raise CostModelError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    shapes = doc.get("shapes") if isinstance(doc, dict) else None
    if not isinstance(shapes, dict) or shape not in shapes:
        known = sorted(shapes) if isinstance(shapes, dict) else []
        raise CostModelError(f"{path}: no shape {shape!r} (has {known})")
    entry = shapes[shape]
    values: dict[str, float] = {}
    for part, keys in (("prefill", PREFILL_KEYS), ("decode", DECODE_KEYS)):
        section = entry.get(part) or {}
        for key in keys:
            if key not in section:
                raise CostModelError(f"{path}: shapes.{shape}.{part} lacks {key!r}")
            value = float(section[key])
            if not math.isfinite(value) or value < 0:
                raise CostModelError(f"{path}: shapes.{shape}.{part}.{key} = {value} is not >= 0")
            values[key] = value
    return CostModel(shape=shape, **values)
