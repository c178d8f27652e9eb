"""Per-step cost of the watermark bias against the memory floor, and end-to-end generation speed.

**Per-step table.** KGW (gamma 0.25, delta 2, context width 2) on random logits at vocabulary
32000, 49152, 128256, 152064 and batch 1, 8, 32, 128, 256, on one device. Columns:

- ``fused``: ``kernels.shard_bias`` (out of place, repeated-context skip mask included), which on
  CUDA is the fused Triton kernel; on a CPU there is no kernel and the column is left empty;
- ``reference``: the torch reference of the same op on the same device;
- ``transformers``: transformers' ``WatermarkLogitsProcessor`` (same gamma, delta, context
  width) on the same device;
- ``copy``: a device-to-device copy of the logits into a preallocated tensor, one read and one
  write of the logits: the floor for any out-of-place op over them.

Ratios: fused (or, without a GPU, reference) to the copy floor, and transformers to fused (or
reference). Times are medians: CUDA events around each call after a cache-clearing write
(``triton.testing.do_bench``; plain CUDA events without Triton) on a GPU, ``time.perf_counter``
on a CPU.

**Fused sampling.** A second table times one sampling step at batch 1 and 32 (``--sample-batches``)
and vocabulary 32000 and 128256 (``--sample-vocabs``): ``kernels.fused_sample`` with the KGW
bias (the fused kernel on CUDA, empty on a CPU), its torch reference, the unfused path a sampler
takes after the processor (``shard_bias``, then temperature, softmax and ``torch.multinomial``),
and the copy floor. vLLM's fused Gumbel-max kernel (about 0.04 ms per step at batch 1) is the bar.

**Host operations.** Torch operations the host dispatches per ``WatermarkLogitsProcessor`` call
and per step of the fused-sampling loop (the model's forward excluded), for each shard scheme,
on the GPU code path: every public op is sent down its Triton branch with the kernel launchers
replaced by stubs, so the count runs on a CPU and counts what a GPU step would cost the host
outside the launches themselves (``--host-ops-only`` prints this table alone). An operation is
one top-level ``aten::`` event of the torch profiler; kernel launches are counted separately.

**End-to-end.** Tokens per second of batched generation with the embedded model (or
``--model DIR``), plain and watermarked (KGW, or ``--e2e-scheme vanilla``), through ``model.generate`` with the processor and
through provmark's fused-sampling loop; every row generates exactly ``--new-tokens`` tokens. A
random-weight model of SmolLM2-1.7B's shape (``--random-layers`` of its 24 layers) runs beside
the embedded one. Each run is warmed up once untimed; the figures are medians of
``--e2e-repeats`` rounds that interleave the four runs.

    python -m benchmarks.kernels                        # both parts, on CUDA when present
    python -m benchmarks.kernels --device cpu --vocabs 32000,128256 --batches 1,8,32
    python -m benchmarks.kernels --skip-e2e             # the per-step table only
    python -m benchmarks.kernels --host-ops-only        # the host-operation counts only
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time

import torch
from transformers.generation.logits_process import WatermarkLogitsProcessor as HFWatermarkLogitsProcessor

from provmark.evaluation.prompts import load_prompts
from provmark.kernels._triton import HAS_TRITON, triton_ready
from provmark.kernels.fused_sampling import fused_sample, sampling_seeds
from provmark.kernels.repeated_context import repeated_context_mask
from provmark.watermark.keys import create_key
from provmark.watermark.kgw import KGWWatermarker

# the module, not the function of the same name that provmark.kernels exports
shard_bias_module = importlib.import_module("provmark.kernels.shard_bias")
fused_sampling_module = importlib.import_module("provmark.kernels.fused_sampling")

VOCABS = (32000, 49152, 128256, 152064)
BATCHES = (1, 8, 32, 128, 256)
SAMPLE_VOCABS = (32000, 128256)
SAMPLE_BATCHES = (1, 32)
KEY = create_key("kgw", {"gamma": 0.25, "delta": 2.0, "context_width": 2}, secret=bytes(32))


def _median_seconds(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of one call of ``fn`` (after a warm-up call)."""
    if device.type == "cuda" and HAS_TRITON:
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    if device.type == "cuda":  # no Triton: CUDA events, without do_bench's cache clearing
        fn()
        times = []
        for _ in range(max(repeats, 20)):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _step_inputs(vocab: int, batch: int, device: torch.device):
    """(logits, input ids, KGW row parameters of ``shard_bias``) of one simulated step."""
    gen = torch.Generator().manual_seed(vocab + batch)
    logits = torch.randn(batch, vocab, generator=gen).to(device)
    input_ids = torch.randint(0, vocab, (batch, 32), generator=gen).to(device)
    contexts = input_ids[:, -KEY.config.context_width :]
    params = KGWWatermarker(KEY).step_params(contexts, None)
    skip = repeated_context_mask(input_ids, start=16, context_width=KEY.config.context_width)
    row_params = dict(keys=params.keys, salts=params.salts, contexts=contexts, shard_counts=params.shard_counts,
                      preferred=params.preferred, deltas=params.deltas, skip=skip)
    return logits, input_ids, row_params


def step_times(vocab: int, batch: int, device: torch.device, repeats: int) -> dict[str, float | None]:
    """Median seconds per step of each column for one (vocabulary, batch) cell."""
    logits, input_ids, row_params = _step_inputs(vocab, batch, device)
    hf = HFWatermarkLogitsProcessor(vocab_size=vocab, device=device, greenlist_ratio=0.25, bias=2.0,
                                    context_width=KEY.config.context_width)
    floor = torch.empty_like(logits)

    def reference():
        shard_bias_module._shard_bias_reference(logits, *row_params.values(), None, logits.clone())

    times = {
        "fused": _median_seconds(lambda: shard_bias_module.shard_bias(logits, **row_params), device, repeats)
        if triton_ready(logits) else None,
        "reference": _median_seconds(reference, device, repeats),
        "transformers": _median_seconds(lambda: hf(input_ids, logits), device, repeats),
        "copy": _median_seconds(lambda: floor.copy_(logits), device, repeats),
    }
    return times


def print_step_table(device: torch.device, vocabs, batches, repeats: int) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} torch threads"
    fused_ready = triton_ready(torch.empty(0, device=device))
    print(f"per-step KGW bias, fp32 logits, {name}; torch {torch.__version__}"
          + (f", triton {importlib.import_module('triton').__version__}" if HAS_TRITON else ", no triton"))
    if not fused_ready:
        print("no fused column: the Triton kernel runs on CUDA GPUs only (this run has none), so the ratios use the "
              "torch reference")
    base = "fused" if fused_ready else "reference"
    print(f"{'vocab':>7} {'batch':>5} {'fused ms':>9} {'reference ms':>13} {'transformers ms':>16} {'copy ms':>9} "
          f"{base + '/copy':>15} {'transformers/' + base:>22}")
    for vocab in vocabs:
        for batch in batches:
            t = step_times(vocab, batch, device, repeats)
            fused = f"{t['fused'] * 1e3:9.3f}" if t["fused"] is not None else f"{'-':>9}"
            print(f"{vocab:>7} {batch:>5} {fused} {t['reference'] * 1e3:13.3f} {t['transformers'] * 1e3:16.3f} "
                  f"{t['copy'] * 1e3:9.3f} {t[base] / t['copy']:15.2f} {t['transformers'] / t[base]:22.1f}", flush=True)


def sample_times(vocab: int, batch: int, device: torch.device, repeats: int) -> dict[str, float | None]:
    """Median seconds of one watermarked sampling step, fused and unfused, for one cell."""
    logits, _, row_params = _step_inputs(vocab, batch, device)
    temperatures = torch.full((batch,), 0.7, device=device)
    seeds = sampling_seeds(0, 0, batch).to(device)
    floor = torch.empty_like(logits)

    def reference():
        fused_sampling_module._fused_sample_reference(logits, *row_params.values(), None, 1.0 / temperatures, seeds)

    def unfused():
        biased = shard_bias_module.shard_bias(logits, **row_params)
        torch.multinomial(torch.softmax(biased / temperatures[:, None], dim=-1), 1)

    return {
        "fused": _median_seconds(lambda: fused_sample(logits, temperatures=temperatures, noise_seeds=seeds, **row_params),
                                 device, repeats) if triton_ready(logits) else None,
        "reference": _median_seconds(reference, device, repeats),
        "unfused": _median_seconds(unfused, device, repeats),
        "copy": _median_seconds(lambda: floor.copy_(logits), device, repeats),
    }


def print_sample_table(device: torch.device, vocabs, batches, repeats: int) -> None:
    fused_ready = triton_ready(torch.empty(0, device=device))
    base = "fused" if fused_ready else "reference"
    print(f"\nper-step watermarked sampling (KGW bias, T 0.7), fp32 logits, {device}")
    print(f"{'vocab':>7} {'batch':>5} {'fused ms':>9} {'reference ms':>13} {'bias+softmax+multinomial ms':>28} "
          f"{'copy ms':>9} {base + '/copy':>15} {'unfused/' + base:>17}")
    for vocab in vocabs:
        for batch in batches:
            t = sample_times(vocab, batch, device, repeats)
            fused = f"{t['fused'] * 1e3:9.3f}" if t["fused"] is not None else f"{'-':>9}"
            print(f"{vocab:>7} {batch:>5} {fused} {t['reference'] * 1e3:13.3f} {t['unfused'] * 1e3:28.3f} "
                  f"{t['copy'] * 1e3:9.3f} {t[base] / t['copy']:15.2f} {t['unfused'] / t[base]:17.2f}", flush=True)


SMOLLM2_1_7B = dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
                   num_key_value_heads=32, max_position_embeddings=8192, rope_theta=130000.0, rms_norm_eps=1e-5,
                   tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
"""SmolLM2-1.7B's shape (its config.json, 24 layers), for a random-weight model of that shape."""


def random_model(layers: int, dtype: torch.dtype = torch.float32):
    """A randomly initialised Llama with SmolLM2-1.7B's widths and vocabulary and ``layers``
    layers (24 is the real depth): the per-step shape of a larger model without its weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMOLLM2_1_7B, num_hidden_layers=layers)).to(dtype).eval()


E2E_KEYS = {  # (key, payload of row i) of the end-to-end rows
    "kgw": (KEY, None),
    "vanilla": (create_key("vanilla", {"bits": 16, "segment_bits": 8}, secret=bytes(32)), lambda i: (37 * i + 5) % (1 << 16)),
}


def print_end_to_end(device: torch.device, model_dir: str | None, batch: int, new_tokens: int, repeats: int,
                     random_layers: int, scheme: str = "kgw") -> None:
    """Tokens per second of both loops, plain and watermarked (``E2E_KEYS[scheme]``), for the
    embedded model and a random-weight model of SmolLM2-1.7B's shape: one warm-up generation per
    (model, loop, key) that is not timed, then ``repeats`` rounds in which the four runs are
    interleaved; the median of each."""
    from provmark.watermark.hook import generate
    from provmark.watermark.models import load_model

    loaded = load_model(model_dir)
    models = [(loaded.name, loaded.model.to(device))]
    if random_layers:
        models.append((f"random SmolLM2-1.7B shape, {random_layers} of 24 layers", random_model(random_layers).to(device)))
    prompts = load_prompts()[:batch]
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    marked_key, payload_of = E2E_KEYS[scheme]
    payloads = [payload_of(i) for i in range(len(prompts))] if payload_of else None
    print(f"\nend to end: batch {len(prompts)}, {new_tokens} new tokens per row, {scheme}, median of {repeats} "
          f"interleaved rounds after one warm-up run each, {device}")
    print(f"{'model':<44} {'loop':<22} {'plain tok/s':>12} {'watermarked tok/s':>18} {'slowdown':>9}")
    for name, model in models:
        runs = [(loop, fused, label, key) for loop, fused in (("transformers generate", False), ("fused sampling", True))
                for label, key in (("plain", None), ("watermarked", marked_key))]

        def run(fused, key, model=model):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            outs = generate(model, loaded.tokenizer, prompts, key, payloads if key is not None else None, seed=1,
                            fused_sampling=fused, **settings)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return sum(len(g.token_ids) for g in outs) / (time.perf_counter() - start)

        for _, fused, _, key in runs:  # warm-up, not timed
            run(fused, key)
        rates = {(loop, label): [] for loop, _, label, _ in runs}
        for _ in range(repeats):  # interleaved, so machine noise hits every run alike
            for loop, fused, label, key in runs:
                rates[loop, label].append(run(fused, key))
        for loop in ("transformers generate", "fused sampling"):
            plain, marked = statistics.median(rates[loop, "plain"]), statistics.median(rates[loop, "watermarked"])
            print(f"{name:<44} {loop:<22} {plain:12.1f} {marked:18.1f} {1 - marked / plain:9.1%}", flush=True)


HOST_SCHEMES = (  # (row label, scheme, params, payload of each row)
    ("kgw", "kgw", {}, None),
    ("mpac", "mpac", {"bits": 16, "radix": 4}, [0xBEEF, 0x1234, 7, 0]),
    ("majormark", "majormark", {"bits": 12}, [5, 1000, 77, 4000]),
    ("majormark+", "majormark+", {"bits": 16}, [3, 2000, 30000, 38415]),
    ("vanilla", "vanilla", {"bits": 8, "segment_bits": 8}, [1, 2, 255, 0]),
    ("vanilla 2seg", "vanilla", {"bits": 16, "segment_bits": 8}, [1, 0x0102, 0xFFFF, 0]),  # segment picked per step
)


class _StubLaunch:
    """Stands in for a Triton kernel: ``kernel[grid](**args)`` only counts the launch."""

    def __init__(self, counter: list):
        self.counter = counter

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.counter.append(1)


def _stub_kernels(counter: list):
    """Send every public op down its Triton branch with stub launchers; returns an undo."""
    import triton

    undo = []
    for name in ("shard_bias", "fused_sampling", "balanced_split", "repeated_context"):
        try:
            module = importlib.import_module(f"provmark.kernels.{name}")
        except ImportError:
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, triton.runtime.JITFunction) or attr == "triton_ready":
                undo.append((module, attr, value))
                setattr(module, attr, (lambda tensor: True) if attr == "triton_ready" else _StubLaunch(counter))
    return lambda: [setattr(module, attr, value) for module, attr, value in undo]


def _count_ops(fn) -> int:
    """Top-level ``aten::`` operations that ``fn()`` dispatches (torch profiler, CPU)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("measured"):
            fn()
    return sum(1 for e in prof.events()
               if e.name.startswith("aten::") and e.cpu_parent is not None and e.cpu_parent.name == "measured")


class _FixedLogits:
    """A stand-in causal LM that returns the same logits at every step and dispatches nothing."""

    def __init__(self, logits):
        self.output = type("Output", (), {"logits": logits, "past_key_values": None})()

    def __call__(self, **kwargs):
        return self.output


def host_ops(scheme: str, params: dict, payloads, vocab: int = 49152, prompt: int = 16, steps: int = 32):
    """(operations per processor call, per fused step; launches per call, per step) of one
    scheme at batch 4 on the stubbed GPU path. The processor call is measured at the sixth
    step of a generation (after ``begin`` where the processor has it, as ``generate`` calls it);
    the fused step is (ops of 2 ``steps`` + 1 steps - ops of ``steps`` + 1 steps) / ``steps``, so
    the set-up, the first step (which reads the whole prompt) and the warm-up are left out."""
    from provmark.watermark import hook

    key = create_key(scheme, params, secret=bytes(range(32)))
    batch = 4
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab - 1, (batch, prompt), generator=gen)
    scores = torch.randn(batch, vocab, generator=gen)
    scores[:, vocab - 1] = float("-inf")  # the stop id: never drawn, so no row finishes
    launches: list = []
    undo = _stub_kernels(launches)
    try:
        processor = hook.WatermarkLogitsProcessor(key, payloads)
        if hasattr(processor, "begin"):  # what generate() does; without it each call compares the prompt
            processor.begin(ids)
        for column in range(5):
            processor(torch.cat([ids, ids[:, :column]], dim=1), scores)
        step = torch.cat([ids, ids[:, :5]], dim=1)
        launches.clear()
        call_ops, call_launches = _count_ops(lambda: processor(step, scores)), len(launches)
        settings = {"temperature": 0.7, "min_new_tokens": 0}
        model = _FixedLogits(scores[:, None, :])
        mask = torch.ones_like(ids)

        def decode(new_tokens):
            processor = hook.WatermarkLogitsProcessor(key, payloads)
            hook._fused_decode(model, ids, mask, processor, {**settings, "max_new_tokens": new_tokens}, 7, [vocab - 1],
                               vocab - 1, None)

        decode(2 * steps + 1)  # warm-up
        launches.clear()
        one = _count_ops(lambda: decode(steps + 1))
        one_launches = len(launches)
        launches.clear()
        many = _count_ops(lambda: decode(2 * steps + 1))
        step_launches = (len(launches) - one_launches) / steps
    finally:
        undo()
    return call_ops, (many - one) / steps, call_launches, step_launches


def print_host_ops() -> None:
    if not HAS_TRITON:
        print("\nno host-operation table: it follows the Triton branch of each op, and Triton is not installed")
        return
    print("\nhost operations on the GPU path (Triton launchers stubbed), batch 4, vocabulary 49152; "
          "top-level aten ops of the torch profiler")
    print(f"{'scheme':<12} {'ops/processor call':>19} {'ops/fused step':>15} {'launches/call':>14} {'launches/step':>14}")
    for label, scheme, params, payloads in HOST_SCHEMES:
        call, step, call_launches, step_launches = host_ops(scheme, params, payloads)
        print(f"{label:<12} {call:>19} {step:>15.1f} {call_launches:>14} {step_launches:>14.1f}", flush=True)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vocabs", type=_ints, default=list(VOCABS))
    parser.add_argument("--batches", type=_ints, default=list(BATCHES))
    parser.add_argument("--sample-vocabs", type=_ints, default=list(SAMPLE_VOCABS))
    parser.add_argument("--sample-batches", type=_ints, default=list(SAMPLE_BATCHES))
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per CPU cell; generation runs per e2e row")
    parser.add_argument("--skip-e2e", action="store_true", help="only the per-step table")
    parser.add_argument("--host-ops-only", action="store_true", help="only the host-operation counts")
    parser.add_argument("--e2e-batch", type=int, default=None, help="rows of the generation batch (CPU 8, GPU 32)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--e2e-repeats", type=int, default=5, help="interleaved rounds of the end-to-end runs")
    parser.add_argument("--random-layers", type=int, default=24,
                        help="layers of the random SmolLM2-1.7B-shaped model (24: the real depth; 0: leave it out)")
    parser.add_argument("--e2e-scheme", choices=sorted(E2E_KEYS), default="kgw", help="the end-to-end rows' watermark")
    parser.add_argument("--model", default=None, help="a local Hugging Face causal LM folder (default: embedded)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with torch.no_grad():
        if args.host_ops_only:
            print_host_ops()
            return 0
        print_step_table(device, args.vocabs, args.batches, args.repeats)
        print_sample_table(device, args.sample_vocabs, args.sample_batches, args.repeats)
        print_host_ops()
        if not args.skip_e2e:
            batch = args.e2e_batch or (32 if device.type == "cuda" else 8)
            print_end_to_end(device, args.model, batch, args.new_tokens, args.e2e_repeats, args.random_layers,
                             args.e2e_scheme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
