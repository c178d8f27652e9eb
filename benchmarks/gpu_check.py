"""Every GPU figure issue 18 asks for, in one run that prints to stdout: for a session that has a GPU.

    PYTHONPATH=$PWD PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check 2>&1 | tee $OUT/gpu_check.txt
    python -m benchmarks.gpu_check --smoke      # on a CPU: tiny sizes through the same code, no GPU figures

Sections, each on its own: a section that fails prints its traceback and the run goes on (exit
status 1 then). ``--only`` picks some of them (``--only pytest,sampling``), so an interrupted run
can be finished in a second, shorter one.

1. ``pytest``: ``pytest -m gpu tests/test_kernel_parity.py``, the compiled kernels against their
   references, the hook on the GPU against the CPU hook, and a sampler step captured in a CUDA
   graph. It is the only test file with GPU tests; the others import the API's packages, which
   the device image lacks.
2. ``sampling``: batch 32, vocabulary 128256, fp32 and bf16 logits. Wall milliseconds per call
   (``--calls`` calls, one synchronisation at the end, after 20 untimed ones, so the host's
   dispatch is what limits a call that is faster on the device) of the public ``fused_sample``
   with KGW's bias, of one ``FusedSampler`` step as ``generate(fused_sampling=True)`` takes it
   (KGW with the repeated-context table; Vanilla-Marking with its segments and pool index), and
   of a CUDA-graph replay of that step. Target: at most 0.05 ms. Then the kernel's own time
   (device time of ``_fused_sample_kernel`` in the torch profiler, per launch) against one read
   of the logits (the device time of ``torch.amax`` over them, which reads each logit once).
   Target: at most 2x.
3. ``e2e``: tokens per second of batched generation, plain and KGW-watermarked (gamma 0.25,
   delta 2, h 2), through ``model.generate`` with the processor and through the fused loop, at
   batch 32 and 128, for random-weight Llamas of the embedded SmolLM2-135M's shape and of
   SmolLM2-1.7B's (all 24 layers), in bf16. Each (model, batch) warms every run up once, then
   ``--repeats`` rounds interleave the four runs; medians. Target: slowdown under 1%.

What the device has (read /work/.library/device/README.md and KINDS.md): torch 2.11, Triton 3.6,
transformers 5.17, numpy, scipy, pytest; no package registry, and model weights don't travel,
so the models are random-weight (their per-step shape is what the overhead depends on) and the
prompts random ids (no tokenizer). Timing on the GPU (estimated, not yet measured): about 2
minutes for ``pytest`` (Triton compiles each kernel variant once), under one for ``sampling``,
3 to 5 for ``e2e``. A device command may run 10 minutes, so run it as two commands on the same
warm machine, each under ``timeout_s=480``:

    PYTHONPATH=$PWD PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check --only pytest,sampling 2>&1 | tee $OUT/a.txt
    PYTHONPATH=$PWD PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check --only e2e 2>&1 | tee $OUT/b.txt
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks.kernels import SMOLLM2_1_7B

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
                    tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
"""The embedded SmolLM2-135M-Instruct's shape (its converted config.json)."""

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("pytest", "sampling", "e2e")
KGW = ("kgw", {"gamma": 0.25, "delta": 2.0, "context_width": 2}, None)
VANILLA = ("vanilla", {"bits": 16, "segment_bits": 8, "context_width": 2}, "rows")  # payload per row


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _key(scheme, params):
    from provmark.watermark.keys import create_key

    return create_key(scheme, params, secret=bytes(range(32)))


def _payloads(kind, batch):
    return None if kind is None else [(37 * row + 5) % (1 << 16) for row in range(batch)]


def wall_ms(fn, device, calls: int, warmup: int = 20) -> float:
    """Milliseconds of wall time per call of ``fn`` over ``calls`` calls with one
    synchronisation at the end (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / calls * 1e3


def kernel_us(fn, name: str, calls: int = 20) -> tuple[float, int]:
    """(microseconds of device time per launch, launches) of the CUDA kernels whose name holds
    ``name`` while ``fn`` runs ``calls`` times, from the torch profiler (warm-up excluded)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    total, count = 0.0, 0
    for event in prof.key_averages():
        if name in event.key:
            total += _device_us(event)
            count += event.count
    if not count:
        raise RuntimeError(f"no CUDA kernel named like {name!r} in the profile")
    return total / count, count


def _device_us(event) -> float:
    """Device microseconds of a profiler average: ``device_time_total`` in recent torch,
    ``cuda_time_total`` before it."""
    for attr in ("device_time_total", "cuda_time_total"):
        try:
            value = getattr(event, attr)
        except Exception:  # a name this torch no longer has
            continue
        if value:
            return float(value)
    return 0.0


def _sampler(device, scheme, params, kind, prompt, steps):
    """A (processor, sampler) pair of a fused generation from ``prompt`` under one key."""
    from provmark.watermark.hook import WatermarkLogitsProcessor

    processor = WatermarkLogitsProcessor(_key(scheme, params), _payloads(kind, prompt.shape[0]))
    sampler = processor.sampler(prompt, steps=steps, temperature=0.7, noise_key=1, stop_ids=[2], pad_id=2, min_new=0)
    return processor, sampler


def check_sampling(device, batch: int, vocab: int, calls: int) -> None:
    from provmark.kernels.fused_sampling import fused_sample, sampling_seeds
    from provmark.kernels.repeated_context import repeated_context_mask
    from provmark.watermark.kgw import KGWWatermarker

    cuda = device.type == "cuda"
    gen = torch.Generator().manual_seed(0)
    print(f"batch {batch}, vocabulary {vocab}, {calls} timed calls per figure; target: fused step <= 0.050 ms wall, "
          "kernel <= 2x one read of the logits")
    print(f"{'logits':<8} {'what':<52} {'wall ms/call':>13}")
    for dtype in (torch.float32, torch.bfloat16):
        label = str(dtype).removeprefix("torch.")
        logits = (torch.randn(batch, vocab, generator=gen) * 3).to(dtype).to(device)
        ids = torch.randint(3, vocab, (batch, 48), generator=gen).to(device)
        key = _key(*KGW[:2])
        contexts = ids[:, -2:]
        params = KGWWatermarker(key).step_params(contexts, None)
        skip = repeated_context_mask(ids, start=16, context_width=2)
        temperatures = torch.full((batch,), 0.7, device=device)
        seeds = sampling_seeds(0, 0, batch).to(device)
        rows = dict(keys=params.keys, salts=params.salts, contexts=contexts, shard_counts=params.shard_counts,
                    preferred=params.preferred, deltas=params.deltas, skip=skip)

        def public():
            fused_sample(logits, temperatures=temperatures, noise_seeds=seeds, **rows)

        figures = [("fused_sample (public, KGW bias, skip flags)", public)]
        samplers = {}
        for scheme, params_, kind in (KGW, VANILLA):
            processor, sampler = _sampler(device, scheme, params_, kind, ids, calls + 64)
            samplers[scheme] = (processor, sampler)
            figures.append((f"FusedSampler step ({scheme}{', repeated-context table' if scheme == 'kgw' else ''})",
                            lambda p=processor, s=sampler: p.sample(s, logits)))
        for what, fn in figures:
            print(f"{label:<8} {what:<52} {wall_ms(fn, device, calls):13.4f}", flush=True)
        if cuda:
            _, sampler = _sampler(device, *KGW, ids, calls + 64)
            static = logits.clone()
            sampler.step(static)  # sizes the scratch; the graph replays the steps after it
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                sampler.step(static)
            print(f"{label:<8} {'CUDA-graph replay of a FusedSampler step (kgw)':<52} "
                  f"{wall_ms(graph.replay, device, calls, warmup=10):13.4f}", flush=True)
            read_us, _ = kernel_us(lambda: torch.amax(logits, dim=1), "reduce")
            size = logits.numel() * logits.element_size()
            print(f"{label:<8} one read of the logits (torch.amax): {read_us:.1f} us device time, "
                  f"{size / read_us / 1e3:.0f} GB/s over {size / 1e6:.1f} MB")
            # the samplers were built with 64 steps to spare: enough for these 23 more
            for what, fn in [("public fused_sample, KGW", public)] + [
                    (f"FusedSampler step, {scheme}", lambda p=p, s=s: p.sample(s, logits)) for scheme, (p, s) in samplers.items()]:
                us, launches = kernel_us(fn, "_fused_sample_kernel")
                print(f"{label:<8} kernel of {what}: {us:.1f} us per launch ({launches} launches profiled), "
                      f"{us / read_us:.2f}x one read of the logits", flush=True)


def _random_llama(config: dict, device, dtype, layers: int | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = {**config, **({"num_hidden_layers": layers} if layers else {})}
    with torch.device(device):  # initialised where it runs: a 1.7B model takes a minute on a CPU
        model = LlamaForCausalLM(LlamaConfig(**config))
    return model.to(dtype).eval()


def check_end_to_end(device, dtype, models, batches, new_tokens: int, repeats: int, prompt_length: int = 32) -> None:
    from transformers import LogitsProcessorList

    from provmark.watermark import hook

    key = _key(*KGW[:2])
    print(f"{new_tokens} new tokens per row, {prompt_length}-id random prompts, {dtype}, median of {repeats} "
          f"interleaved rounds after one warm-up run each; target: slowdown < 1%")
    print(f"{'model':<40} {'batch':>5} {'loop':<22} {'plain tok/s':>12} {'watermarked tok/s':>18} {'slowdown':>9}")
    for name, config, layers in models:
        model = _random_llama(config, device, dtype, layers)
        vocab, eos = config["vocab_size"], config["eos_token_id"]
        for batch in batches:
            gen = torch.Generator().manual_seed(batch)
            ids = torch.randint(3, vocab, (batch, prompt_length), generator=gen).to(device)
            mask = torch.ones_like(ids)

            def run(fused, marked, ids=ids, mask=mask, batch=batch):
                processor = hook.WatermarkLogitsProcessor(key) if marked else None
                _sync(device)
                start = time.perf_counter()
                with torch.no_grad():
                    if fused:
                        settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "temperature": 1.0}
                        out = hook._fused_decode(model, ids, mask, processor, settings, 1, [eos], eos, None)
                    else:
                        processors = LogitsProcessorList()
                        if processor is not None:
                            processor.begin(ids)
                            processors.append(processor)
                        out = model.generate(input_ids=ids, attention_mask=mask, logits_processor=processors,
                                             do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=eos)
                _sync(device)
                assert out.shape == (batch, prompt_length + new_tokens), out.shape
                return batch * new_tokens / (time.perf_counter() - start)

            runs = [(loop, fused, marked) for loop, fused in (("transformers generate", False), ("fused sampling", True))
                    for marked in (False, True)]
            for _, fused, marked in runs:  # warm-up, not timed
                run(fused, marked)
            rates = {(loop, marked): [] for loop, _, marked in runs}
            for _ in range(repeats):
                for loop, fused, marked in runs:
                    rates[loop, marked].append(run(fused, marked))
            for loop in ("transformers generate", "fused sampling"):
                plain, marked = statistics.median(rates[loop, False]), statistics.median(rates[loop, True])
                print(f"{name:<40} {batch:>5} {loop:<22} {plain:12.1f} {marked:18.1f} {1 - marked / plain:9.2%}", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def run_pytest(timeout: int) -> None:
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "tests/test_kernel_parity.py"]
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, cwd=ROOT, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"pytest -m gpu exited with {done.returncode}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run, of {','.join(SECTIONS)}")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: the code paths, no GPU figures")
    parser.add_argument("--calls", type=int, default=500, help="timed calls per sampling figure")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved end-to-end rounds")
    parser.add_argument("--batches", default="32,128", help="end-to-end batch sizes")
    parser.add_argument("--pytest-timeout", type=int, default=300)
    args = parser.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    from provmark.kernels._triton import HAS_TRITON, INTERPRETING

    versions = f"torch {torch.__version__}, CUDA available {torch.cuda.is_available()}, Triton "
    versions += __import__("triton").__version__ if HAS_TRITON else "not installed"
    if not args.smoke and (not torch.cuda.is_available() or not HAS_TRITON or INTERPRETING):
        print(f"no GPU to check ({versions}{', TRITON_INTERPRET set' if INTERPRETING else ''}): this script times "
              "the compiled kernels on CUDA; --smoke runs its code paths on the CPU")
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    print(f"gpu_check: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU smoke run'}; {versions}")
    if args.smoke:
        sections = [s for s in sections if s != "pytest"]
        plan = {"sampling": lambda: check_sampling(device, 2, 5000, calls=3),
                "e2e": lambda: check_end_to_end(device, torch.float32, [("SmolLM2-135M shape, 1 layer", SMOLLM2_135M, 1)],
                                                [2], new_tokens=3, repeats=1)}
    else:
        batches = [int(b) for b in args.batches.split(",") if b]
        models = [("random SmolLM2-135M shape (30 layers)", SMOLLM2_135M, None),
                  ("random SmolLM2-1.7B shape (24 layers)", SMOLLM2_1_7B, None)]
        plan = {"pytest": lambda: run_pytest(args.pytest_timeout),
                "sampling": lambda: check_sampling(device, 32, 128256, args.calls),
                "e2e": lambda: check_end_to_end(device, torch.bfloat16, models, batches, args.new_tokens, args.repeats)}
    failed = []
    for section in sections:
        print(f"\n== {section} ==", flush=True)
        start = time.perf_counter()
        try:
            plan[section]()
        except Exception:  # report it and go on: the other sections' figures still count
            traceback.print_exc(file=sys.stdout)
            failed.append(section)
        print(f"-- {section}: {'FAILED' if section in failed else 'done'} in {time.perf_counter() - start:.0f} s", flush=True)
    print(f"\ngpu_check: {'failed: ' + ', '.join(failed) if failed else 'every section ran'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
