"""Fetch vLLM 0.33.0's own test suite (from its PyPI sdist) into a cache outside the repo.

vLLM's tests are not shipped in the wheel, and they must never be committed here; this
script (also loaded by ``conftest.py`` beside it) puts the sdist's ``tests/`` tree
under ``<cache>/vllm-0.33.0/`` and returns that folder.

Source, in order: the tarball named by ``CACHEWISE_VLLM_SDIST`` (a local copy, for offline
machines), else the sdist listed in PyPI's simple index (the PEP 691 JSON form pip itself
reads), verified against the sha256 the index publishes. ``pip download --no-binary :all: vllm==0.33.0`` cannot be used: pip
prepares the sdist's metadata, which builds vLLM's build requirements (torch==2.14.0
CUDA wheels, cmake, ...) before saving anything.

Cache: ``CACHEWISE_CACHE`` or ``~/.cache/cachewise``. Run as a script to pre-fetch:
``python tests/vllm_upstream/fetch_vllm_tests.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

VLLM_VERSION = "0.33.0"
INDEX = "https://pypi.org/simple/vllm/"  # PyPI's simple index, JSON form (PEP 691), as pip reads it
SDIST_NAME = f"vllm-{VLLM_VERSION}.tar.gz"
TEST_FILE = Path("tests/v1/core/test_prefix_caching.py")


class FetchError(RuntimeError):
    """The sdist could not be obtained or does not contain the expected tests."""


def cache_dir() -> Path:
    return Path(os.environ.get("CACHEWISE_CACHE", Path.home() / ".cache" / "cachewise"))


def _download_sdist(dest: Path) -> None:
    request = urllib.request.Request(INDEX, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            index = json.load(resp)
    except (OSError, ValueError) as exc:
        raise FetchError(f"cannot read {INDEX}: {exc}") from exc
    entry = next((f for f in index.get("files", []) if f.get("filename") == SDIST_NAME), None)
    if entry is None:
        raise FetchError(f"{INDEX} lists no {SDIST_NAME}")
    url, digest = entry["url"], entry["hashes"]["sha256"]
    partial = dest.with_suffix(".part")
    sha = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=300) as resp, partial.open("wb") as out:
            while chunk := resp.read(1 << 20):
                sha.update(chunk)
                out.write(chunk)
    except OSError as exc:
        raise FetchError(f"cannot download {url}: {exc}") from exc
    if sha.hexdigest() != digest:
        partial.unlink()
        raise FetchError(f"{url}: sha256 {sha.hexdigest()} != published {digest}")
    partial.rename(dest)


def ensure_vllm_tests() -> Path:
    """The extracted sdist root holding ``tests/`` (fetched and extracted once per cache)."""
    root = cache_dir() / f"vllm-{VLLM_VERSION}"
    if (root / TEST_FILE).is_file():
        return root
    cache_dir().mkdir(parents=True, exist_ok=True)
    tarball = Path(os.environ["CACHEWISE_VLLM_SDIST"]) if "CACHEWISE_VLLM_SDIST" in os.environ else None
    if tarball is None:
        tarball = cache_dir() / SDIST_NAME
        if not tarball.is_file():
            _download_sdist(tarball)
    prefix = f"vllm-{VLLM_VERSION}/tests/"
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        try:
            with tarfile.open(tarball) as tar:
                members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
                tar.extractall(tmp, members=members, filter="data")
        except (OSError, tarfile.TarError) as exc:
            raise FetchError(f"{tarball}: cannot extract tests: {exc}") from exc
        extracted = Path(tmp) / f"vllm-{VLLM_VERSION}"
        if not (extracted / TEST_FILE).is_file():
            raise FetchError(f"{tarball}: has no {TEST_FILE}")
        if root.exists():
            shutil.rmtree(root)
        extracted.rename(root)
    return root


if __name__ == "__main__":
    try:
        print(ensure_vllm_tests())
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
