"""Measure the host-tier transfer model: host<->device copy time of KV-cache blocks.

Run on a machine with an NVIDIA GPU and PyTorch (no vLLM needed):

    python replay/measure_transfer.py --out replay/transfer_coefficients.json

What is timed, each direction (host->device = load, device->host = store), with CUDA
events, median of repeats after warm-up, host memory pinned:

* ``contiguous(bytes)``: one copy of a contiguous buffer, 1 MiB .. 4 GiB.
* ``paged(chunk, n)``: ``n`` copies of ``chunk`` bytes each between scattered pages of a
  paged pool, as vLLM's offloading worker issues them (one copy per block and layer:
  a Llama-3.1-8B block of 16 tokens is 64 KiB per layer, K and V together). The copies are
  captured in one CUDA graph, so the figure has no Python launch cost in it; vLLM's
  ``swap_blocks_batch`` submits them as one batched copy, which this approximates.

Fitted (non-negative least squares), per direction, to the form the replay uses:

    transfer_s = t0 + bytes / bandwidth + chunks * t_chunk

Caveats kept in the output file: torch copies, not vLLM's ``swap_blocks_batch`` kernel or
its Triton path for small pages; one GPU with nothing else running (a real engine's copies
share the PCIe link and the copy engines with other work); the host buffers are pinned
once up front (vLLM pins its host pool at start-up too).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
from pathlib import Path

import numpy as np

MIB = 1 << 20
CONTIGUOUS_BYTES = [MIB << k for k in range(0, 13)]  # 1 MiB .. 4 GiB
CHUNK_BYTES = [16 << 10, 64 << 10, 256 << 10, 1 << 20]
CHUNKS_PER_COPY = [64, 512, 4096]
POOL_BYTES = 4 << 30


def _time(fn, repeats: int) -> float:
    import torch

    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def measure(repeats: int, seed: int) -> dict[str, list[dict]]:
    """Time contiguous and paged copies both ways; return the timed points per direction."""
    import torch

    rng = np.random.default_rng(seed)
    host = torch.empty(POOL_BYTES, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(POOL_BYTES, dtype=torch.uint8, device="cuda")
    points: dict[str, list[dict]] = {"load": [], "store": []}
    directions = {"load": (dev, host), "store": (host, dev)}  # (destination, source)

    for name, (dst, src) in directions.items():
        for nbytes in CONTIGUOUS_BYTES:
            s = _time(lambda: dst[:nbytes].copy_(src[:nbytes], non_blocking=True), repeats)
            points[name].append({"bytes": nbytes, "chunks": 1, "s": s, "gb_s": nbytes / s / 1e9})
        for chunk in CHUNK_BYTES:
            slots = POOL_BYTES // chunk
            for n in CHUNKS_PER_COPY:
                if n * chunk > POOL_BYTES // 2:
                    continue
                src_ids = rng.choice(slots, size=n, replace=False)
                dst_ids = rng.choice(slots, size=n, replace=False)
                stream = torch.cuda.Stream()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.stream(stream):
                    for a, b in zip(dst_ids.tolist(), src_ids.tolist()):  # warm the allocator
                        dst[a * chunk : (a + 1) * chunk].copy_(src[b * chunk : (b + 1) * chunk], non_blocking=True)
                torch.cuda.synchronize()
                with torch.cuda.graph(graph, stream=stream):
                    for a, b in zip(dst_ids.tolist(), src_ids.tolist()):
                        dst[a * chunk : (a + 1) * chunk].copy_(src[b * chunk : (b + 1) * chunk], non_blocking=True)
                s = _time(graph.replay, repeats)
                nbytes = n * chunk
                points[name].append({"bytes": nbytes, "chunks": n, "chunk_bytes": chunk, "s": s, "gb_s": nbytes / s / 1e9})
                del graph

    return points


def fit(points: dict[str, list[dict]]) -> dict:
    """Fit ``t0 + bytes/bandwidth + chunks*t_chunk`` per direction (NNLS, relative error)."""
    from scipy.optimize import nnls

    fits = {}
    for name, pts in points.items():
        rows = np.array([[1.0, p["bytes"], p["chunks"]] for p in pts])
        times = np.array([p["s"] for p in pts])
        # Weight each point by 1/time so small copies count as much as large ones.
        coef, _ = nnls(rows / times[:, None], np.ones(len(pts)))
        pred = rows @ coef
        fits[name] = {
            "t0_s": coef[0],
            "bandwidth_gb_s": (1.0 / coef[1] / 1e9) if coef[1] > 0 else None,
            "t_chunk_s": coef[2],
            "max_rel_error": float(np.max(np.abs(pred - times) / times)),
        }
    return fits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    result = {
        "measured_on": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "date": dt.date.today().isoformat(),
        "script": "replay/measure_transfer.py",
        "model": "transfer_s = t0_s + bytes / (bandwidth_gb_s * 1e9) + chunks * t_chunk_s",
        "caveats": __doc__.split("Caveats kept in the output file:")[1].strip(),
        "points": measure(args.repeats, args.seed),
    }
    _write(args.out, result)  # the timings are kept even if the fit cannot run
    result["fits"] = fit(result["points"])
    for name, coefficients in result["fits"].items():
        print(name, json.dumps(coefficients))
    _write(args.out, result)


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
