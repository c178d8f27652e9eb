"""Shared fixtures: a tiny random Llama for fast hook tests and the real embedded model (slow).

Without a GPU, Triton (when installed) runs in interpreter mode so that the kernel parity tests
run the kernels' own source on CPU tensors. Triton reads the switch when a kernel is decorated,
so it is set here, before any test module imports provmark.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded model's tokenizer (converts the GGUF file on first use, then cached)."""
    from provmark.watermark.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_model():
    """A 1-layer random Llama over SmolLM2's 49152-token vocabulary: near-uniform next tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=2, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def real_model():
    """The embedded SmolLM2-135M-Instruct."""
    from provmark.watermark.models import load_model

    return load_model()


_POSTGRES_SETUP: list[str] = []


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for the session (tests/postgres.py), started on first use and removed at the
    end; skipped only when the operator opts out with PROVMARK_NO_POSTGRES=1. Without the binaries and
    without the opt-out the tests that need it error, naming the fix."""
    import time

    from tests import postgres

    if postgres.opted_out():
        pytest.skip(f"PostgreSQL backend not tested: {postgres.OPT_OUT_ENV} is set")
    started = time.perf_counter()
    server = postgres.PostgresServer()
    server.start()
    _POSTGRES_SETUP.append(f"PostgreSQL {server.bindir.parent.name} test server: initdb and start took "
                           f"{time.perf_counter() - started:.1f} s (port {server.port})")
    yield server
    server.remove()


def pytest_collection_modifyitems(config, items):
    """Deselect the PostgreSQL run of the tests marked ``one_backend``: their behaviour (admission,
    scoring, the generation queue) is the same on both backends, and the real-model ones cost tens
    of seconds a run."""
    kept, dropped = [], []
    for item in items:
        on_postgres = getattr(item, "callspec", None) is not None and item.callspec.params.get("backend") == "postgresql"
        (dropped if on_postgres and item.get_closest_marker("one_backend") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_terminal_summary(terminalreporter):
    for line in _POSTGRES_SETUP:
        terminalreporter.write_line(line)
