"""Every Triton kernel against its torch reference: masks and ids bit for bit, logits within the
dtype's rounding.

Each parity test runs twice: ``interpreter`` (CPU tensors under ``TRITON_INTERPRET=1``, which
tests/conftest.py sets when no GPU is present: this is what CI runs) and ``gpu`` (CUDA tensors,
compiled kernels; skipped without a GPU). On a GPU machine the interpreter variant runs with
``TRITON_INTERPRET=1 pytest tests/test_kernel_parity.py``. Shapes stay small because the
interpreter runs every program in numpy; vocabulary sizes straddle the block size. The public
ops' dispatch is tested on both devices, and every kernel is compiled for sm_90 on the CPU
(``tests/compile_kernels.py``), which the interpreter alone would not catch.
"""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from provmark.kernels._triton import HAS_TRITON, INTERPRETING
from provmark.kernels.balanced_split import (
    _available_ids_reference,
    _available_ids_triton,
    available_ids,
    head_of,
    partition_starts,
)
from provmark.kernels.fused_sampling import _fused_sample_reference, _fused_sample_triton, _log, fused_sample, sampling_seeds
from provmark.kernels.prf import MASK32, split_key, token_words
from provmark.kernels.repeated_context import repeated_context_mask
from provmark.kernels.shard_bias import _shard_bias_reference, _shard_bias_triton, preferred_mask, shard_bias

# the module, not the function of the same name that provmark.kernels exports
shard_bias_module = importlib.import_module("provmark.kernels.shard_bias")
balanced_split_module = importlib.import_module("provmark.kernels.balanced_split")
fused_sampling_module = importlib.import_module("provmark.kernels.fused_sampling")
repeated_context_module = importlib.import_module("provmark.kernels.repeated_context")

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (pip install -e '.[gpu]')")

GPU_READY = HAS_TRITON and torch.cuda.is_available() and not INTERPRETING
DEVICES = [
    pytest.param("cpu", id="interpreter", marks=pytest.mark.skipif(not INTERPRETING, reason="needs TRITON_INTERPRET=1")),
    pytest.param("cuda", id="gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(not GPU_READY, reason="needs a CUDA GPU")]),
]
KEYS = [0, 2**32, 2**63 + 12345, 2**64 - 1]  # both key words, the sign bit of int64, all ones


def _block(device):
    """A small block under the interpreter (fewer numpy ops per program, more blocks per row);
    the production block on a GPU."""
    return 256 if device == "cpu" else shard_bias_module.BLOCK_V


def _rows(device, batch=4, width=2, positions=0, seed=0, pool=0):
    """Row parameters exercising every case at once: keys across 64 bits, salts up to 2**32 - 1,
    shard counts 1..64, preferred sets that are runs, scattered bits and bit 63, contexts that
    are a slice of a longer sequence. ``pool`` > 0 adds pool keys and ``pool_bits`` (the salts
    are then messages, up to 2**32 - 1 too)."""
    gen = torch.Generator().manual_seed(seed)
    table = (batch, positions) if positions else (batch,)
    preferred = torch.randint(-(2**63), 2**63 - 1, table, generator=gen)
    preferred.view(-1)[0] = 0b1  # a run at shard 0 (KGW)
    rows = {
        "keys": torch.tensor([split_key(KEYS[i % 4]) for i in range(batch)]),
        "salts": torch.randint(0, 2**32, table, generator=gen),
        # the last ids of a longer sequence, as the hook passes them: a non-contiguous slice
        "contexts": torch.randint(0, 2**17, (batch, width + 7), generator=gen)[:, -width:],
        "shard_counts": torch.tensor([[4, 64, 37, 1, 2, 7][i % 6] for i in range(batch)]),
        "preferred": preferred,
        "deltas": torch.tensor([[0.5, 2.0, 3.25, 1.5][i % 4] for i in range(batch)]),
        "position_keys": torch.tensor([split_key(KEYS[(i + 1) % 4]) for i in range(batch)]) if positions else None,
    }
    rows["salts"].view(-1)[-1] = 2**32 - 1
    if pool:
        rows["pool_keys"] = torch.tensor([split_key(KEYS[(i + 2) % 4]) for i in range(batch)])
    rows = {k: v.to(device) if v is not None else None for k, v in rows.items()}
    if pool:
        rows["pool_bits"] = pool
    return rows


def _pool(rows):
    """The pool arguments of ``rows`` as keywords (none without a pool)."""
    return {"pool_keys": rows["pool_keys"], "pool_bits": rows["pool_bits"]} if "pool_keys" in rows else {}


def _kernel(logits, rows, skip=None, inplace=False, device="cpu"):
    out = logits if inplace else torch.empty_like(logits, memory_format=torch.contiguous_format)
    return _shard_bias_triton(logits, rows["keys"], rows["salts"], rows["contexts"], rows["shard_counts"],
                              rows["preferred"], rows["deltas"], skip, rows["position_keys"], out, **_pool(rows),
                              block_v=_block(device))


def _reference(logits, rows, skip=None):
    return _shard_bias_reference(logits, rows["keys"], rows["salts"], rows["contexts"], rows["shard_counts"],
                                 rows["preferred"], rows["deltas"], skip, rows["position_keys"], logits.clone(),
                                 **_pool(rows))


def _mask(rows, vocab):
    return preferred_mask(rows["keys"], rows["salts"], rows["contexts"], rows["shard_counts"], rows["preferred"], vocab,
                          position_keys=rows["position_keys"], **_pool(rows))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("vocab", [1, 257, 2049, 4095])
@pytest.mark.parametrize("width,positions,pool", [(1, 0, 0), (2, 0, 0), (5, 0, 0), (2, 3, 0), (1, 32, 0), (3, 1, 0),
                                                  (1, 0, 6), (2, 3, 1), (3, 1, 16)])
def test_shard_bias_kernel_prefers_exactly_the_reference_ids(device, vocab, width, positions, pool):
    rows = _rows(device, width=width, positions=positions, seed=vocab + width, pool=pool)
    rows["deltas"] = torch.ones(4, device=device)
    biased = _kernel(torch.zeros(4, vocab, device=device), rows, device=device)
    assert torch.equal(biased != 0, _mask(rows, vocab))


TOLERANCES = [  # (dtype, atol, rtol) of the biased logits
    (torch.float32, 0, 0),
    (torch.float16, 0, 0),
    # compiled kernels round to nearest even like torch; Triton's interpreter truncates bf16
    (torch.bfloat16, 0, 2**-7),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
def test_shard_bias_kernel_logits_match_the_reference_within_dtype_rounding(device, dtype, atol, rtol):
    rows = _rows(device, positions=4)
    logits = (torch.randn(4, 2049, generator=torch.Generator().manual_seed(1)) * 4).to(dtype).to(device)
    logits[:, ::7] = float("-inf")
    logits[1, 5::11] = float("nan")
    biased = _kernel(logits, rows, device=device)
    expected = _reference(logits, rows)
    assert biased.dtype == dtype
    torch.testing.assert_close(biased, expected, atol=atol, rtol=rtol, equal_nan=True)
    assert torch.equal(torch.isneginf(biased), torch.isneginf(logits))
    assert torch.equal(torch.isnan(biased), torch.isnan(logits))


@pytest.mark.parametrize("device", DEVICES)
def test_shard_bias_kernel_leaves_skipped_rows_bit_for_bit_alone(device):
    rows = _rows(device)
    logits = torch.randn(4, 1000, device=device)
    skip = torch.tensor([False, True, True, False], device=device)
    biased = _kernel(logits, rows, skip=skip, device=device)
    assert torch.equal(biased, _reference(logits, rows, skip=skip))
    assert torch.equal(biased[1:3], logits[1:3]) and not torch.equal(biased[0], logits[0])
    everything = torch.ones(4, dtype=torch.bool, device=device)
    assert torch.equal(_kernel(logits, rows, skip=everything, device=device), logits)


@pytest.mark.parametrize("device", DEVICES)
def test_shard_bias_kernel_reads_and_writes_non_contiguous_logits_in_place(device):
    rows = _rows(device, positions=2)
    wide = torch.randn(4, 2 * 777, device=device)
    strided = wide[:, 1::2]
    expected = _reference(strided, rows)
    out = _kernel(strided, rows, inplace=True, device=device)
    assert out.data_ptr() == strided.data_ptr()
    assert torch.equal(strided, expected)
    transposed = torch.randn(777, 4, device=device).t()  # column stride 4, row stride 1
    assert torch.equal(_kernel(transposed, rows, device=device), _reference(transposed, rows))


@pytest.mark.parametrize("device", DEVICES)
def test_shard_bias_kernel_gives_each_row_the_same_result_alone_as_in_a_batch(device):
    rows = _rows(device, positions=5)
    logits = torch.randn(4, 600, device=device)
    batch = _kernel(logits, rows, device=device)
    for i in range(4):
        alone = {k: v[i : i + 1] if v is not None else None for k, v in rows.items()}
        assert torch.equal(_kernel(logits[i : i + 1], alone, device=device), batch[i : i + 1])


def test_public_shard_bias_sends_cpu_tensors_to_the_reference(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a CPU tensor reached the Triton kernel")

    monkeypatch.setattr(shard_bias_module, "_shard_bias_triton", refuse)
    rows = _rows("cpu")
    logits = torch.randn(4, 300)
    assert torch.equal(shard_bias(logits, **rows), _reference(logits, rows))


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_READY, reason="needs a CUDA GPU")
def test_public_shard_bias_sends_cuda_tensors_to_the_kernel(monkeypatch):
    calls = []
    launch = shard_bias_module._shard_bias_triton
    monkeypatch.setattr(shard_bias_module, "_shard_bias_triton", lambda *a, **k: calls.append(1) or launch(*a, **k))
    rows = _rows("cuda", positions=3)
    logits = torch.randn(4, 50_000, device="cuda")
    assert torch.equal(shard_bias(logits, **rows), _reference(logits, rows)) and calls == [1]


def _split_rows(device, batch, vocab, seed):
    """Proxy distributions (one flat, one peaked, one with a zero-mass tail) and seeds that
    include 0 and 2**32 - 1; partitions of a 64-pool."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(batch, vocab, generator=gen) * 2, dim=-1)
    if batch > 1:
        probs[1] = torch.softmax(torch.randn(vocab, generator=gen) * 6, dim=-1)
    if batch > 2:
        probs[2, vocab // 2 :] = 0
        probs[2] /= probs[2].sum()
    order = torch.randint(0, 2**32, (batch,), generator=gen)
    coin = torch.randint(0, 2**32, (batch,), generator=gen)
    order[0], coin[-1] = 0, 2**32 - 1
    starts = partition_starts(torch.randint(0, 64, (batch,), generator=gen), 64)
    return [t.to(device) for t in (probs, order, coin, starts)]


def _split_kernel(device, probs, order, coin, starts, head, max_block_head=None):
    return _available_ids_triton(probs, order, coin, starts, head, block_v=_block(device),
                                 max_block_head=max_block_head or (256 if device == "cpu" else 1024))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("vocab,head", [(1, 1), (257, 8), (1000, 256), (2049, 100), (300, 300), (700, 0)])
def test_balanced_split_kernel_makes_exactly_the_reference_ids_available(device, vocab, head):
    rows = _split_rows(device, 4, vocab, seed=vocab + head)
    assert torch.equal(_split_kernel(device, *rows, head), _available_ids_reference(*rows, head))


@pytest.mark.parametrize("device", DEVICES)
def test_balanced_split_kernel_streams_a_head_larger_than_one_chunk(device):
    rows = _split_rows(device, 2, 1500, seed=5)
    assert torch.equal(_split_kernel(device, *rows, 600, max_block_head=256), _available_ids_reference(*rows, 600))


@pytest.mark.parametrize("device", DEVICES)
def test_balanced_split_kernel_cuts_a_mass_of_exactly_one_half_like_the_reference(device):
    # Dyadic masses add exactly in any order, so an id whose cumulative mass is exactly one half
    # is available in both (the rule is >=, not >).
    gen = torch.Generator().manual_seed(7)
    probs = torch.zeros(4, 600)
    for row, count in enumerate([2, 4, 8, 16]):
        probs[row, torch.randperm(600, generator=gen)[:count]] = 1 / count
    _, order, coin, starts = _split_rows("cpu", 4, 600, seed=8)
    mass, ids = head_of(probs, 16)
    rotated = (token_words(order[:, None], ids) - starts[:, None]) & MASK32
    assert bool((mass.gather(1, rotated.argsort(dim=1)).cumsum(dim=1) == 0.5).any(dim=1).all())
    rows = [t.to(device) for t in (probs, order, coin, starts)]
    assert torch.equal(_split_kernel(device, *rows, 16), _available_ids_reference(*rows, 16))


def test_public_available_ids_sends_cpu_tensors_to_the_reference(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a CPU tensor reached the Triton kernels")

    monkeypatch.setattr(balanced_split_module, "_available_ids_triton", refuse)
    rows = _split_rows("cpu", 3, 500, seed=9)
    assert torch.equal(available_ids(*rows, 64), _available_ids_reference(*rows, 64))


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_READY, reason="needs a CUDA GPU")
def test_public_available_ids_sends_cuda_tensors_to_the_kernels(monkeypatch):
    calls = []
    launch = balanced_split_module._available_ids_triton
    monkeypatch.setattr(balanced_split_module, "_available_ids_triton", lambda *a, **k: calls.append(1) or launch(*a, **k))
    rows = _split_rows("cuda", 4, 50_000, seed=10)
    assert torch.equal(available_ids(*rows, 256), _available_ids_reference(*rows, 256)) and calls == [1]


if HAS_TRITON:
    import triton
    import triton.language as tl

    from provmark.kernels.fused_sampling import _log_tl

    @triton.jit
    def _log_probe_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + i, _log_tl(tl.load(x_ptr + i, mask=i < n, other=1.0)), mask=i < n)


@pytest.mark.parametrize("device", DEVICES)
def test_the_samplers_log_is_bit_identical_in_the_kernel_and_the_reference(device):
    gen = torch.Generator().manual_seed(11)
    u = ((torch.randint(0, 2**23, (3000,), generator=gen) * 2 + 1).float() * 2.0**-24)  # every u the noise uses
    spread = torch.exp(torch.empty(3000).uniform_(-80, 80, generator=gen))  # normal floats of every exponent
    x = torch.cat([u, -torch.log(u), spread, torch.tensor([2.0**-24, 1 - 2.0**-24, 1.0, 2.0, 0.5])]).to(device)
    out = torch.empty_like(x)
    _log_probe_kernel[(triton.cdiv(x.numel(), 1024),)](x, out, x.numel(), BLOCK=1024, enable_fp_fusion=False)
    assert torch.equal(out, _log(x))
    assert torch.allclose(out.double(), torch.log(x.double()), rtol=2e-7, atol=0)


def _sample_rows(device, batch, vocab, dtype, seed, positions=0, pool=0):
    rows = _rows(device, batch=batch, positions=positions, seed=seed, pool=pool)
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, vocab, generator=gen) * 3).to(dtype)
    logits[:, 1::5] = float("-inf")
    logits[0, ::3] = float("nan")
    temperatures = torch.tensor([[1.0, 0.7, 2.0, 0.3][i % 4] for i in range(batch)])
    return rows, logits.to(device), temperatures.to(device)


def _sample_args(rows, skip=None, bias=True):
    if not bias:
        return (None,) * 8
    return (rows["keys"], rows["salts"], rows["contexts"], rows["shard_counts"], rows["preferred"], rows["deltas"], skip,
            rows["position_keys"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("vocab", [1, 257, 2049, 4095])
def test_fused_sampling_kernel_draws_exactly_the_reference_ids(device, dtype, vocab):
    for step, (bias, positions, pool) in enumerate([(True, 0, 0), (True, 3, 0), (False, 0, 0), (True, 2, 5)]):
        rows, logits, temperatures = _sample_rows(device, 4, vocab, dtype, seed=vocab + step, positions=positions, pool=pool)
        skip = torch.tensor([False, True, False, False], device=device)
        args = _sample_args(rows, skip, bias)[:8]
        seeds = sampling_seeds(vocab, step, 4).to(device)
        inverse = 1.0 / temperatures
        sampled = _fused_sample_triton(logits, *args, inverse, seeds, **_pool(rows), block_v=_block(device))
        assert torch.equal(sampled, _fused_sample_reference(logits, *args, inverse, seeds, **_pool(rows)))


@pytest.mark.parametrize("device", DEVICES)
def test_fused_sampling_kernel_agrees_over_many_steps_of_one_distribution(device):
    # 64 rows, one distribution: ids spread over the likely tokens, and every row matches.
    rows, logits, temperatures = _sample_rows(device, 64, 300, torch.float32, seed=3)
    logits = logits[1:2].expand(64, -1)
    seeds = sampling_seeds(99, 0, 64).to(device)
    inverse = 1.0 / temperatures
    args = _sample_args(rows)[:8]
    sampled = _fused_sample_triton(logits, *args, inverse, seeds, block_v=_block(device))
    assert torch.equal(sampled, _fused_sample_reference(logits, *args, inverse, seeds))
    assert len(set(sampled.tolist())) > 5


def test_public_fused_sample_sends_cpu_tensors_to_the_reference(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a CPU tensor reached the Triton kernel")

    monkeypatch.setattr(fused_sampling_module, "_fused_sample_triton", refuse)
    _, logits, temperatures = _sample_rows("cpu", 4, 300, torch.float32, seed=4)
    seeds = sampling_seeds(1, 0, 4)
    expected = _fused_sample_reference(logits, *(None,) * 8, 1.0 / temperatures, seeds)
    assert torch.equal(fused_sample(logits, temperatures=temperatures, noise_seeds=seeds), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_READY, reason="needs a CUDA GPU")
def test_public_fused_sample_sends_cuda_tensors_to_the_kernel(monkeypatch):
    calls = []
    launch = fused_sampling_module._fused_sample_triton
    monkeypatch.setattr(fused_sampling_module, "_fused_sample_triton", lambda *a, **k: calls.append(1) or launch(*a, **k))
    rows, logits, temperatures = _sample_rows("cuda", 4, 50_000, torch.float32, seed=5, positions=2)
    seeds = sampling_seeds(2, 0, 4).cuda()
    kwargs = dict(zip(["keys", "salts", "contexts", "shard_counts", "preferred", "deltas", "skip", "position_keys"],
                      _sample_args(rows)))
    sampled = fused_sample(logits, temperatures=temperatures, noise_seeds=seeds, **kwargs)
    assert torch.equal(sampled, _fused_sample_reference(logits, *_sample_args(rows)[:8], 1.0 / temperatures, seeds))
    assert calls == [1]


def test_every_kernel_compiles_for_an_h100_without_a_gpu():
    # Triton's compiler and ptxas run on the CPU: this catches what the interpreter cannot
    # (compile-time types, constexpr arguments) before a GPU ever sees the kernels.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "tests.compile_kernels", "--arch", "90"], env=env, capture_output=True,
                          text=True, cwd=Path(__file__).parent.parent, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(": ok") == 11


HOOK_CASES = [
    ("kgw", {}, None),
    ("mpac", {"bits": 16, "radix": 4}, [0xBEEF, 0x1234, 7]),
    ("majormark", {"bits": 12}, [5, 1000, 77]),
    ("majormark+", {"bits": 16}, [3, 2000, 38415]),  # capacity 14**4 = 38416
    ("vanilla", {"bits": 8, "segment_bits": 8}, [1, 2, 255]),
]


def _kernel_path(monkeypatch, device):
    """Send CPU tensors down the kernels' branch (run by the interpreter); a no-op on a GPU."""
    if device == "cpu":
        for module in (shard_bias_module, fused_sampling_module, repeated_context_module):
            monkeypatch.setattr(module, "triton_ready", lambda tensor: True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scheme,params,payloads", HOOK_CASES)
def test_the_hook_on_a_gpu_biases_exactly_like_the_hook_on_a_cpu(monkeypatch, device, scheme, params, payloads):
    from provmark.watermark.hook import WatermarkLogitsProcessor
    from provmark.watermark.keys import create_key

    key = create_key(scheme, params, secret=bytes(range(32)))
    gen = torch.Generator().manual_seed(12)
    ids = torch.randint(0, 49152, (3, 12), generator=gen)
    # Row 1's next context (columns 10, 11) repeats the context of the generated step at column
    # 10 (columns 8, 9). The source is cloned: an overlapping in-place copy is refused by torch.
    ids[1, -2:] = ids[1, -4:-2].clone()
    scores = torch.randn(3, 49152, generator=gen)
    on_cpu = WatermarkLogitsProcessor(key, payloads)
    on_cpu(ids[:, :8], scores)  # the prompt: columns 0..7
    expected = on_cpu(ids, scores)
    with monkeypatch.context() as patch:
        _kernel_path(patch, device)
        on_device = WatermarkLogitsProcessor(key, payloads)
        on_device(ids[:, :8].to(device), scores.to(device))
        biased = on_device(ids.to(device), scores.to(device)).cpu()
    assert torch.equal(biased, expected)
    repeated = key.scheme != "vanilla"  # Vanilla-Marking biases every step, as its paper does
    assert torch.equal(expected[1], scores[1]) == repeated and not torch.equal(expected[0], scores[0])


def _sampler_cases(device):
    """(name, watermarker or None, payloads): no watermark, KGW at h=1 (repeats are common),
    MPAC's position tables at h=2 and Vanilla-Marking's segments and pool index at h=2."""
    from provmark.watermark.keys import create_key
    from provmark.watermark.schemes import watermarker_class

    cases = [("plain", None, None)]
    for scheme, params, payloads in (("kgw", {"context_width": 1, "gamma": 0.5}, None),
                                     ("mpac", {"bits": 8, "radix": 4, "context_width": 2}, [0xA5, 0x3C, 7]),
                                     ("vanilla", {"bits": 12, "segment_bits": 6, "pool_size": 8, "context_width": 2},
                                      [0xA5C, 0x3C1, 7])):
        key = create_key(scheme, params, secret=bytes(range(32)))
        cases.append((scheme, watermarker_class(scheme)(key), payloads))
    return cases


def _run_sampler(device, watermarker, payloads, prompt, logits, block_v, min_new):
    from provmark.kernels.fused_sampling import FusedSampler

    params = None
    if watermarker is not None:
        params = watermarker.step_params(torch.zeros((prompt.shape[0], watermarker.context_width), dtype=torch.int64,
                                                     device=device), payloads)
    sampler = FusedSampler(prompt.to(device), steps=logits.shape[0], temperature=0.8, noise_key=5, stop_ids=[5, 7],
                           pad_id=2, min_new=min_new, block_v=block_v, params=params,
                           context_width=watermarker.context_width if watermarker else None,
                           skips_repeated_contexts=watermarker is not None and watermarker.skips_repeated_contexts)
    for step_logits in logits:
        sampler.step(step_logits.to(device))
    return sampler


@pytest.mark.parametrize("device", DEVICES)
def test_the_samplers_kernel_steps_draw_exactly_the_reference_steps_ids(monkeypatch, device):
    # Steps of a whole generation through the stateful kernel (step number, context, noise row,
    # repeated-context table, stop-id masking, padding and done flags all read and written on
    # the device) against the reference steps. The logits favour a few ids, so contexts repeat;
    # id 5 leads row 0 from the start, so row 0 stops at step min_new and is padded after.
    gen = torch.Generator().manual_seed(21)
    steps, batch, vocab = 14, 3, 300
    logits = torch.randn(steps, batch, vocab, generator=gen) * 3
    logits[:, :, :12] += 6
    logits[:, 0, 5] += 20
    logits[3, 1, 40:60] = float("nan")
    prompt = torch.randint(0, vocab, (batch, 3), generator=gen)
    for name, watermarker, payloads in _sampler_cases(device):
        for min_new, dtype in ((4, torch.float32), (0, torch.bfloat16)):
            typed = logits.to(dtype)
            reference = _run_sampler("cpu", watermarker, payloads, prompt, typed, 128, min_new)
            with monkeypatch.context() as patch:
                _kernel_path(patch, device)
                kernel = _run_sampler(device, watermarker, payloads, prompt, typed, _block(device) // 2, min_new)
            assert kernel.fused and (watermarker is None or not watermarker.skips_repeated_contexts
                                     or kernel.repeated.on_device)
            assert torch.equal(kernel.sequence.cpu(), reference.sequence), (name, min_new, dtype)
            assert torch.equal(kernel.done.cpu(), reference.done)
            generated = reference.sequence[:, 3:]
            assert bool(reference.done[0]) and generated[0, min_new] == 5 and bool((generated[0, min_new + 1 :] == 2).all())
            if watermarker is not None and watermarker.context_width == 1:
                repeats = [repeated_context_mask(reference.sequence[:, :c], start=3, context_width=1) for c in range(4, 17)]
                assert any(bool(r[1:].any()) for r in repeats)  # the kernel met repeated contexts


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_READY, reason="needs a CUDA GPU")
def test_a_sampler_step_captured_in_a_cuda_graph_replays_the_eager_steps():
    from provmark.kernels.fused_sampling import FusedSampler
    from provmark.watermark.keys import create_key
    from provmark.watermark.kgw import KGWWatermarker

    key = create_key("kgw", {"context_width": 2}, secret=bytes(range(32)))
    gen = torch.Generator().manual_seed(22)
    steps, batch, vocab = 20, 32, 128256
    logits = (torch.randn(steps, batch, vocab, generator=gen) * 3).cuda()
    prompt = torch.randint(0, vocab, (batch, 5), generator=gen).cuda()
    watermarker = KGWWatermarker(key)
    params = watermarker.step_params(torch.zeros((batch, 2), dtype=torch.int64, device="cuda"), None)

    def sampler():
        return FusedSampler(prompt, steps=steps, temperature=0.7, noise_key=3, stop_ids=[2], pad_id=2, min_new=4,
                            context_width=2, skips_repeated_contexts=True, params=params)

    eager = sampler()
    for step_logits in logits:
        eager.step(step_logits)
    graphed, static = sampler(), logits[0].clone()
    graphed.step(static)  # the first step sizes the scratch; the graph replays the rest
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graphed.step(static)
    for step_logits in logits[1:]:
        static.copy_(step_logits)
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(graphed.sequence, eager.sequence) and torch.equal(graphed.done, eager.done)
