"""Measure the replay's GPU cost model: prefill and decode step times of a decoder-only LLM.

Run on a machine with an NVIDIA GPU and PyTorch (no vLLM needed, random weights):

    python replay/measure_costs.py --out replay/cost_coefficients.json

What is timed, per model shape, with CUDA events (median of repeats after warm-up):

* ``prefill(new, ctx)``: one sequence, ``new`` new tokens attending to ``ctx`` cached
  tokens plus themselves (causal, lower-right aligned), through ``layers_timed`` real
  decoder layers (RMSNorm, QKV/O projections, grouped-query SDPA, SwiGLU MLP), scaled to
  the model's full depth, plus the LM head on the last token.
* ``decode(batch, ctx)``: one token for each of ``batch`` sequences holding ``ctx``
  cached tokens each, same layers, plus the LM head for the batch.

Fitted (non-negative least squares) to the forms the replay uses:

    prefill_s = a0 + a_tok * new + a_ctx * new * (ctx + new / 2)
    decode_s  = b0 + b_seq * batch + b_ctx * batch * ctx

Caveats kept in the output file: one GPU, no tensor parallelism (a 70B-class shape on one
GPU is timed layer by layer and scaled, as if it fit), no paged-attention kernel (dense
SDPA over a contiguous, preallocated cache), no CUDA graphs (eager launches inflate
the fixed per-step terms a0 and b0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import nnls


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer's dimensions."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int


SHAPES = {
    "llama-3.1-8b-bf16": Shape(4096, 32, 32, 8, 14336, 128256),
    "llama-3.1-70b-bf16": Shape(8192, 80, 64, 8, 28672, 128256),
}


def _layer(shape: Shape, device: str, dtype):  # -> callable(x, k_cache, v_cache, mask)
    import torch
    import torch.nn.functional as F

    h, d = shape.hidden, shape.hidden // shape.heads
    g = lambda *s: torch.randn(*s, device=device, dtype=dtype) * 0.02  # noqa: E731
    wqkv = g((shape.heads + 2 * shape.kv_heads) * d, h)
    wo, wgu, wd = g(h, h), g(2 * shape.intermediate, h), g(h, shape.intermediate)
    norm = torch.ones(h, device=device, dtype=dtype)

    def run(x, k_cache, v_cache, attn_mask):
        b, n, _ = x.shape
        y = F.rms_norm(x, (h,), norm)
        q, k, v = (y @ wqkv.T).split([shape.heads * d, shape.kv_heads * d, shape.kv_heads * d], -1)
        q = q.view(b, n, shape.heads, d).transpose(1, 2)
        # The caches hold ctx + n slots; the new keys/values are written in place, as a
        # paged cache would, so the step reads the cache once and never copies it.
        k_cache[:, :, -n:] = k.view(b, n, shape.kv_heads, d).transpose(1, 2)
        v_cache[:, :, -n:] = v.view(b, n, shape.kv_heads, d).transpose(1, 2)
        a = _attend(q, k_cache, v_cache, attn_mask)
        x = x + a.transpose(1, 2).reshape(b, n, h) @ wo.T
        gate, up = (F.rms_norm(x, (h,), norm) @ wgu.T).chunk(2, -1)
        return x + (F.silu(gate) * up) @ wd.T

    return run


ATTENTION_PATHS: set[str] = set()  # which SDPA paths ran, recorded in the output


def _attend(q, k, v, attn_mask):
    """Grouped-query SDPA on a fused kernel (flash / memory-efficient / cuDNN), never the
    math fallback; where no fused kernel takes GQA with this mask, KV heads are expanded."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with sdpa_kernel(fused):
        try:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=True)
            path = "fused-gqa"
        except RuntimeError:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            path = "fused-expanded-kv"
    ATTENTION_PATHS.add(f"{path} (causal mask: {attn_mask is not None})")
    return out


def _time(fn, repeats: int) -> float:
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def measure_shape(shape: Shape, layers_timed: int, repeats: int) -> dict:
    """Time prefill and decode grids for one shape; return raw points and fitted coefficients."""
    import torch
    from torch.nn.attention.bias import causal_lower_right

    dev, dt_ = "cuda", torch.bfloat16
    layers = [_layer(shape, dev, dt_) for _ in range(layers_timed)]
    lm_head = torch.randn(shape.vocab, shape.hidden, device=dev, dtype=dt_) * 0.02
    d = shape.hidden // shape.heads
    scale = shape.layers / layers_timed

    def forward(x, ctx, causal):
        n = x.shape[1]
        kc = torch.zeros(x.shape[0], shape.kv_heads, ctx + n, d, device=dev, dtype=dt_)
        vc = torch.zeros_like(kc)
        mask = causal_lower_right(n, ctx + n) if causal else None

        def run():
            y = x
            for layer in layers:
                y = layer(y, kc, vc, mask)
            return y

        return run

    prefill, decode = [], []
    with torch.inference_mode():
        for new in (64, 256, 1024, 4096):
            for ctx in (0, 4096, 16384, 49152):
                x = torch.randn(1, new, shape.hidden, device=dev, dtype=dt_)
                t_layers = _time(forward(x, ctx, causal=True), repeats)
                t_head = _time(lambda: x[:, -1] @ lm_head.T, repeats)
                prefill.append({"new": new, "ctx": ctx, "s": t_layers * scale + t_head})
        for batch in (1, 8, 32, 64):
            for ctx in (1024, 8192, 32768):
                if batch * ctx > 64 * 16384:
                    continue
                x = torch.randn(batch, 1, shape.hidden, device=dev, dtype=dt_)
                t_layers = _time(forward(x, ctx, causal=False), repeats)
                t_head = _time(lambda: x[:, 0] @ lm_head.T, repeats)
                decode.append({"batch": batch, "ctx": ctx, "s": t_layers * scale + t_head})

    a_rows = [[1.0, p["new"], p["new"] * (p["ctx"] + p["new"] / 2)] for p in prefill]
    b_rows = [[1.0, p["batch"], p["batch"] * p["ctx"]] for p in decode]
    a, _ = nnls(np.array(a_rows), np.array([p["s"] for p in prefill]))
    b, _ = nnls(np.array(b_rows), np.array([p["s"] for p in decode]))
    return {
        "shape": asdict(shape),
        "layers_timed": layers_timed,
        "prefill": {"a0": a[0], "a_tok": a[1], "a_ctx": a[2]},
        "decode": {"b0": b[0], "b_seq": b[1], "b_ctx": b[2]},
        "points": {"prefill": prefill, "decode": decode},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers-timed", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    import torch

    result = {
        "measured_on": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "date": dt.date.today().isoformat(),
        "script": "replay/measure_costs.py",
        "caveats": __doc__.split("Caveats kept in the output file:")[1].strip(),
        "shapes": {},
    }
    for name, shape in SHAPES.items():
        result["shapes"][name] = measure_shape(shape, args.layers_timed, args.repeats)
        print(name, json.dumps({k: result["shapes"][name][k] for k in ("prefill", "decode")}))
    result["attention_paths"] = sorted(ATTENTION_PATHS)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
