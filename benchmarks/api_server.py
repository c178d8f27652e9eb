"""A throwaway registry and a ``provmark serve`` process on loopback, for the API benchmarks.

``ServerFixture`` makes a registry (an SQLite file in a temporary folder, or a PostgreSQL database
given by URL) through the real command line (tenant, keys), starts ``provmark serve`` on a free port
and stops it when done; ``another_node`` is a second server, on its own port and in its own process
group, over the same registry (several API nodes on one PostgreSQL): the server and its worker
processes (``--workers``) run in a process group of their own, and every signal goes to the whole
group, so a SIGKILL kills the workers too instead of leaving them serving. ``tiny_model_dir`` saves
a 1-layer random Llama with SmolLM2's tokenizer, so runs that generate do not spend minutes in
the real model.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PROVMARK = [sys.executable, "-m", "provmark.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model_dir(folder: Path) -> Path:
    """A 1-layer random Llama over SmolLM2's vocabulary with its tokenizer, saved to ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from provmark.watermark.models import load_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=2, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    return folder


class ServerFixture:
    """A registry with tenant ``bench`` and the given keys, and ``provmark serve`` over it."""

    def __init__(self, *, keys: list[list[str]], serve_args: list[str] = (), folder: str | None = None,
                 db: str | None = None):
        self.folder = Path(folder or tempfile.mkdtemp(prefix="provmark-bench-"))
        self.db = db or self.folder / "registry.db"
        self.env = {**os.environ, "PROVMARK_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
        self.token = self.cli("tenants", "create", "--db", str(self.db), "bench").splitlines()[1]
        self.key_ids = [self.cli("keys", "create", "--db", str(self.db), "--tenant", "bench", *k).split()[3]
                        for k in keys]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.serve_args = list(serve_args)
        self.process: subprocess.Popen | None = None

    def another_node(self, serve_args: list[str] | None = None) -> ServerFixture:
        """A second server over this one's registry, tenant, keys and master key, on its own port."""
        node = object.__new__(ServerFixture)
        node.__dict__.update(self.__dict__)
        node.port = free_port()
        node.url = f"http://127.0.0.1:{node.port}"
        node.serve_args = list(self.serve_args if serve_args is None else serve_args)
        node.process = None
        return node

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def cli(self, *args: str) -> str:
        return subprocess.run([*PROVMARK, *args], env=self.env, check=True, capture_output=True, text=True).stdout

    def start(self, log: Path | None = None, timeout: float = 120.0) -> None:
        out = open(log or os.devnull, "ab")
        self.process = subprocess.Popen(
            [*PROVMARK, "serve", "--db", str(self.db), "--port", str(self.port), *self.serve_args],
            env=self.env, stdout=out, stderr=out, start_new_session=True,  # its own group: see kill
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"provmark serve exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("provmark serve did not answer /healthz in time")

    def kill(self, sig=signal.SIGKILL, timeout: float = 30.0) -> None:
        """Send ``sig`` to the server and its workers and wait until every one of them has exited."""
        if self.process is None or self.process.poll() is not None:
            return
        group = self.process.pid  # start_new_session made the server its group's leader
        os.killpg(group, sig)
        self.process.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # workers outlive the server by a moment (uvicorn stops them)
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise TimeoutError(f"workers of provmark serve (group {group}) still alive {timeout:g} s after {sig!r}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill(signal.SIGTERM)
