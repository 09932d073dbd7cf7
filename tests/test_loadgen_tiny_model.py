"""The tiny local model's tokenizer: deterministic, one token per filler word, a working chat template."""

from __future__ import annotations

from cachewise.loadgen.filler import WORDS, filler
from cachewise.loadgen.tiny_model import build_tokenizer


def test_tokenizer_is_deterministic_and_filler_words_are_single_tokens() -> None:
    a, b = build_tokenizer(seed=0), build_tokenizer(seed=0)
    assert a.get_vocab() == b.get_vocab()
    text = filler(300, "x")
    assert len(a(text)["input_ids"]) == 300
    assert all(len(a(" " + w)["input_ids"]) == 1 for w in WORDS)


def test_chat_template_renders_roles_and_generation_prompt() -> None:
    tok = build_tokenizer(seed=0)
    rendered = tok.apply_chat_template(
        [{"role": "system", "content": "sa"}, {"role": "user", "content": "bo"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>system\nsa<|im_end|>\n<|im_start|>user\nbo<|im_end|>\n<|im_start|>assistant\n"
