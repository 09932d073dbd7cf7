"""Synthetic token ids that reproduce a workload's recorded prefix sharing exactly.

Two token sequences share a KV-cache block iff they agree on every token up to the end of
that block, so the ids only need to be equal where the trace says prompts are equal, and
different everywhere else. :class:`TokenSynth` draws them from seeded generators:

* the shared prefix of group ``g``: one fixed random sequence per group;
* the new tokens of call ``c`` (tool results, user text): a sequence seeded by the call;
* the output of call ``c``: a sequence seeded by the call (the replay engine "samples"
  exactly these, so the next call can repeat them);
* a block-hash trace's block ``h``: a sequence seeded by ``h`` (``hash_block_tokens`` long).

Invariants: every id is in ``[FIRST_ID, vocab_size)``; the same call always gets the same
ids (for a given seed); distinct random blocks collide with probability about
``block_size * log(vocab)`` bits of luck, i.e. never in practice.
"""

from __future__ import annotations

import numpy as np

from cachewise.replay.workload import CallPlan, Workload

FIRST_ID = 1000  # stay clear of special tokens at the start of the vocabulary
_PREFIX, _FRESH, _OUTPUT, _HASH = 0, 1, 2, 3


class TokenSynth:
    """Token ids of prompts and outputs of one workload."""

    def __init__(self, workload: Workload, seed: int, vocab_size: int, hash_block_tokens: int):
        if vocab_size <= FIRST_ID:
            raise ValueError(f"vocab_size {vocab_size} must exceed {FIRST_ID}")
        self.seed = seed
        self.vocab_size = vocab_size
        self.hash_block_tokens = max(1, hash_block_tokens)
        longest: dict[int, int] = {}
        for c in workload.calls:
            longest[c.prefix_group] = max(longest.get(c.prefix_group, 0), c.prefix_len)
        self._prefixes = {g: self._draw(n, _PREFIX, g) for g, n in longest.items()}

    def _draw(self, n: int, *key: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, *key])
        return rng.integers(FIRST_ID, self.vocab_size, size=n, dtype=np.int64)

    def output(self, call: CallPlan) -> np.ndarray:
        """The ``output_len`` tokens the engine generates for ``call``."""
        return self._draw(call.output_len, _OUTPUT, call.thread, call.index)

    def prompt(self, call: CallPlan, previous: np.ndarray | None) -> np.ndarray:
        """The prompt of ``call``; ``previous`` is the previous call's prompt + output.

        Raises ``ValueError`` when ``call.keep_len`` needs more of ``previous`` than exists.
        """
        if call.hash_ids is not None:
            parts = [self._draw(self.hash_block_tokens, _HASH, h & 0x7FFFFFFFFFFFFFFF) for h in call.hash_ids]
            head = np.concatenate(parts)[: call.prompt_len] if parts else np.empty(0, np.int64)
        elif call.keep_len:
            if previous is None or len(previous) < call.keep_len:
                have = 0 if previous is None else len(previous)
                raise ValueError(f"{call.request_id}: keeps {call.keep_len} tokens of a previous call with {have}")
            head = previous[: call.keep_len]
        else:
            head = self._prefixes[call.prefix_group][: call.prefix_len]
        fresh = self._draw(call.prompt_len - len(head), _FRESH, call.thread, call.index)
        return np.concatenate([head, fresh])
