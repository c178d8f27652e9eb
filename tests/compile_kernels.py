"""Compile every Triton kernel for an NVIDIA target without a GPU (Triton's compiler and ptxas).

The interpreter runs the kernels' Python semantics; it does not run Triton's code generator, so
a kernel could pass the interpreter parity tests and still fail to compile (a constexpr where a
tensor was expected, a type the compiler refuses). This compiles each kernel in the
specialisations the launchers use, as the JIT would on a GPU: pointers 16-byte aligned, integer
arguments divisible by 16 where real shapes are, unit strides folded.

    python -m tests.compile_kernels [--arch 90]    # must run without TRITON_INTERPRET

Prints one line per specialisation (and whether the logits loads vectorise); exits 1 on the
first kernel that does not compile.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

# modules, not the functions of the same names that provmark.kernels exports
balanced_split = importlib.import_module("provmark.kernels.balanced_split")
fused_sampling = importlib.import_module("provmark.kernels.fused_sampling")
repeated_context = importlib.import_module("provmark.kernels.repeated_context")
shard_bias = importlib.import_module("provmark.kernels.shard_bias")

ALIGNED = [["tt.divisibility", 16]]


def _spec(kernel, types: dict, constants: dict, aligned: tuple = ()):
    """(kernel, signature, constexprs, attrs): ``types`` names the runtime arguments, ``aligned``
    those the JIT would see as multiples of 16 (pointers are always aligned)."""
    signature = {name: "constexpr" if name in constants else types[name] for name in kernel.arg_names}
    attrs = {
        (kernel.arg_names.index(name),): ALIGNED
        for name, kind in signature.items()
        if kind.startswith("*") or name in aligned
    }
    return kernel, signature, constants, attrs


def specialisations():
    """Every kernel in the variants the launchers produce."""
    row_params = {"keys_ptr": "*i64", "salts_ptr": "*i64", "contexts_ptr": "*i64", "shard_counts_ptr": "*i64",
                  "preferred_ptr": "*i64", "deltas_ptr": "*fp32", "skip_ptr": "*i1", "position_keys_ptr": "*i64",
                  "pool_keys_ptr": "*i64", "num_positions": "i32", "contexts_row_stride": "i32"}
    # (dtype, positions, inplace, pool bits): Vanilla-Marking's pool index with positions in fp32
    for dtype, positions, inplace, pool in (("fp32", True, False, 6), ("bf16", False, True, 0), ("fp16", True, True, 0)):
        types = {"logits_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", **row_params, "vocab_size": "i32",
                 "logits_row_stride": "i32", "logits_col_stride": "i32", "out_row_stride": "i32", "out_col_stride": "i32"}
        constants = {"CONTEXT_WIDTH": 2, "HAS_POSITIONS": positions, "POOL_BITS": pool, "HAS_SKIP": True, "INPLACE": inplace,
                     "BLOCK_V": shard_bias.BLOCK_V, "logits_col_stride": 1, "out_col_stride": 1}
        if dtype == "fp16":
            constants["num_positions"] = 1  # an int argument equal to 1 arrives as a constexpr
        yield f"shard_bias {dtype} positions={positions} inplace={inplace} pool_bits={pool}", _spec(
            shard_bias._shard_bias_kernel, types, constants, ("vocab_size", "logits_row_stride", "out_row_stride"))
    yield "coin", _spec(balanced_split._coin_kernel,
                        {"out_ptr": "*i1", "coin_seeds_ptr": "*i64", "vocab_size": "i32", "out_row_stride": "i32"},
                        {"BLOCK_V": balanced_split.BLOCK_V}, ("vocab_size", "out_row_stride"))
    for one_chunk in (True, False):
        yield f"head_split one_chunk={one_chunk}", _spec(
            balanced_split._head_split_kernel,
            {"out_ptr": "*i1", "mass_ptr": "*fp64", "ids_ptr": "*i64", "order_seeds_ptr": "*i64", "starts_ptr": "*i64",
             "head": "i32", "out_row_stride": "i32"},
            {"BLOCK_HEAD": 256, "ONE_CHUNK": one_chunk}, ("head", "out_row_stride"))
    sample_types = {"logits_row_stride": "i32", "logits_col_stride": "i32", "vocab_size": "i32",
                    "keys_ptr": "*i64", "salts_ptr": "*i64", "shard_counts_ptr": "*i64", "preferred_ptr": "*i64",
                    "deltas_ptr": "*fp32", "position_keys_ptr": "*i64", "pool_keys_ptr": "*i64", "num_positions": "i32",
                    "sequence_ptr": "*i64", "sequence_row_stride": "i32", "first_column": "i32", "step_ptr": "*i64",
                    "skip_ptr": "*i1", "table_ptr": "*i32", "table_capacity": "i32", "inv_temperatures_ptr": "*fp32",
                    "noise_seeds_ptr": "*i64", "noise_step_stride": "i32", "stop_ids_ptr": "*i64", "min_new": "i32",
                    "pad_id": "i32", "done_ptr": "*i1", "partial_scores_ptr": "*fp32", "partial_ids_ptr": "*i64",
                    "counters_ptr": "*i32", "out_ptr": "*i64", "num_blocks": "i32", "row_slots": "i32"}
    # (dtype, bias, positions, pool bits, skip, stateful, stop ids): a stateless call with a skip
    # flag, a generation step with the repeated-context table and stop ids, a plain generation
    # step, and a Vanilla-Marking generation step (segments and pool index, no skip)
    for dtype, bias, positions, pool, skip, stateful, stops in (
            ("fp32", True, True, 0, 1, False, 0), ("bf16", True, False, 0, 2, True, 2), ("fp16", False, False, 0, 0, True, 1),
            ("bf16", True, True, 12, 0, True, 1)):
        constants = {"CONTEXT_WIDTH": 2 if bias else 0, "HAS_BIAS": bias, "HAS_POSITIONS": positions, "POOL_BITS": pool,
                     "SKIP": skip,
                     "STATEFUL": stateful, "NUM_STOPS": stops, "BLOCK_V": fused_sampling.BLOCK_V,
                     "BLOCK_BLOCKS": 64, "logits_col_stride": 1}
        yield f"fused_sample {dtype} bias={bias} skip={skip} stateful={stateful} pool_bits={pool}", _spec(
            fused_sampling._fused_sample_kernel, {"logits_ptr": f"*{dtype}", **sample_types}, constants,
            ("vocab_size", "logits_row_stride", "table_capacity"))
    yield "repeated_context", _spec(repeated_context._repeated_context_kernel,
                                    {"table_ptr": "*i32", "capacity": "i32", "sequence_ptr": "*i64",
                                     "sequence_row_stride": "i32", "column": "i32", "skip_ptr": "*i1"},
                                    {"CONTEXT_WIDTH": 3}, ("capacity",))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, 90 for H100 (default)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter does not compile", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", args.arch, 32)
    for name, (kernel, signature, constants, attrs) in specialisations():
        options = {"enable_fp_fusion": False}  # as every launcher passes
        compiled = triton.compile(ASTSource(kernel, signature, constants, attrs), target=target, options=options)
        vector = "vectorised" if re.search(r"ld\.global(\.\w+)*\.v[24]", compiled.asm["ptx"]) else "scalar"
        print(f"sm_{args.arch} {name}: ok ({vector} loads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
