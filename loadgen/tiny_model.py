"""A tiny local chat model for serving tests: random-weight Llama plus a locally trained tokenizer.

``python -m cachewise.loadgen.tiny_model OUT_DIR`` writes a Hugging Face model folder that
vLLM serves without any hub access: a 2-layer Llama (hidden 128, 4 attention heads, 2 KV
heads) with seeded random weights, and a byte-level BPE tokenizer trained with
``tokenizers`` on a generated corpus of the words :mod:`cachewise.loadgen.filler` writes (so
each filler word is one token and prompt lengths are easy to hit). A ChatML chat template
is included, so ``/v1/chat/completions`` works.

Deterministic: the same ``seed`` gives the same files (weights, vocabulary, merges).
Writing is atomic: the folder is built beside ``OUT_DIR`` and renamed into place; an
existing complete folder (``config.json`` present) is left as it is unless ``--force``.
Cost: a few seconds on one CPU core; about 2 MB on disk.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

from cachewise.loadgen.filler import WORDS

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus(seed: int, lines: int = 4000) -> list[str]:
    """Training text: the filler words (each many times) plus chat roles and punctuation."""
    rng = random.Random(seed)
    roles = ["system", "user", "assistant", "tool"]
    return [" ".join(rng.choices(WORDS, k=24)) + f" {rng.choice(roles)}: ." for _ in range(lines)]


def build_tokenizer(seed: int = 0, vocab_size: int = 2048):  # -> transformers.PreTrainedTokenizerFast
    """A byte-level BPE tokenizer trained on :func:`_corpus`, wrapped for ``save_pretrained``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="</s>",
        chat_template=CHAT_TEMPLATE,
    )


def build_model(vocab_size: int, seed: int = 0, eos_token_id: int = 4, bos_token_id: int = 1):  # -> LlamaForCausalLM
    """The random-weight 2-layer Llama (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16384,
        rms_norm_eps=1e-5,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    return LlamaForCausalLM(config)


def write_tiny_model(out: str | Path, seed: int = 0, force: bool = False) -> Path:
    """Write the model folder to ``out`` (atomically); returns ``out``."""
    out = Path(out)
    if (out / "config.json").exists() and not force:
        return out
    tokenizer = build_tokenizer(seed)
    model = build_model(
        len(tokenizer), seed, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), bos_token_id=tokenizer.bos_token_id
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="model folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rewrite an existing folder")
    args = parser.parse_args(argv)
    path = write_tiny_model(args.out, args.seed, args.force)
    print(f"tiny model: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
