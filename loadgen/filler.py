"""Filler text of a given token length: what replayed prompts are made of.

A recorded session gives prompt *lengths*, not texts; the load generator rebuilds each
call's messages from filler words so that the server sees the recorded prompt growth.
:data:`WORDS` is a fixed list of 400 pronounceable words (deterministic); the tiny model's
tokenizer (:mod:`cachewise.loadgen.tiny_model`) is trained on them, so there each word is
one token. For another server's tokenizer the caller measures ``tokens_per_word`` once
(:func:`cachewise.loadgen.client.calibrate`) and :func:`filler` divides by it.

Different ``seed`` s give different word sequences, so two threads never share a prefix
block by accident (400 words: two 16-word blocks agree with probability 400**-16).
"""

from __future__ import annotations

import itertools
import random

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh", "tr", "pl", "gr", "st"]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["", "n", "r", "s"]

WORDS: list[str] = [o + v + c for o, v, c in itertools.product(_ONSETS, _VOWELS, _CODAS)]
assert len(WORDS) == 400


def filler(num_tokens: int, seed: int | str, tokens_per_word: float = 1.0) -> str:
    """About ``num_tokens`` tokens of words, determined by ``seed`` (empty for ``num_tokens <= 0``)."""
    words = max(0, round(num_tokens / tokens_per_word))
    if words == 0:
        return ""
    rng = random.Random(str(seed))
    return " ".join(rng.choices(WORDS, k=words))
