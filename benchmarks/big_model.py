"""A SmolLM2-1.7B-shaped model on this machine: GPTQ and SparseGPT over it block by block with
`tfcompress.models.lean.lean_compress`, peak memory and seconds per block.

Writes a checkpoint in SmolLM2-1.7B's shape (24 layers, d 2048, 32 heads and KV heads, d_ff
8192, vocabulary 49,152, tied embeddings; random float16 weights, quality is not the point)
as sharded safetensors with Hugging Face Llama names into a scratch folder removed at exit.
Each method then runs in a fresh interpreter of its own (``--child``), so its peak RSS (the
kernel's VmHWM: exact, not sampled) is that method's alone, TensorFlow included. Calibration
is ``--calib`` windows of ``--calib-len`` random token ids. Target: GPTQ's peak <= 3 GB.

    python -m benchmarks.big_model                 # writes results/big_model.json
    python -m benchmarks.big_model --blocks 4      # a partial run: the first 4 blocks
    python -m benchmarks.big_model --quick         # a 2-block toy, in this process, seconds
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import bench_parser, parse_args, scratch_dir, write_results

SHAPE = {"vocab_size": 49152, "hidden_size": 2048, "num_hidden_layers": 24,
         "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 8192}
QUICK_SHAPE = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 64}
METHODS = ("gptq", "sparsegpt")
TARGET_GPTQ_GB = 3.0
BLOCKS_PER_SHARD = 4


def method_config(name: str, quick: bool = False):
    """GPTQ int4 g128 act-order and SparseGPT 50 %, as `benchmarks.llm` runs them (groups of
    16 for the ``--quick`` toy's 32-wide inputs)."""
    from tfcompress.prune import SparseGPTConfig
    from tfcompress.quantize import GPTQConfig

    if name == "gptq":
        return GPTQConfig(bits=4, granularity="group", group_size=16 if quick else 128,
                          act_order=True)
    return SparseGPTConfig(sparsity=0.5)


def write_checkpoint(folder: Path, shape: dict, seed: int = 0) -> float:
    """A random float16 Llama checkpoint of ``shape`` (Hugging Face names, tied, one shard
    per `BLOCKS_PER_SHARD` blocks, written one shard at a time); returns its size in GB."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    d, f, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    hd = d // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * hd
    n = shape["num_hidden_layers"]

    def r(*size):
        return (rng.standard_normal(size, dtype=np.float32) * 0.02).astype(np.float16)

    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **shape,
              "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 130000.0,
              "tie_word_embeddings": True, "torch_dtype": "float16"}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    rest = {"model.embed_tokens.weight": r(v, d), "model.norm.weight": np.ones(d, np.float16)}
    save_file(rest, str(folder / "model-embed.safetensors"))
    for first in range(0, n, BLOCKS_PER_SHARD):
        shard = {}
        for i in range(first, min(first + BLOCKS_PER_SHARD, n)):
            p = f"model.layers.{i}."
            shard |= {p + "input_layernorm.weight": np.ones(d, np.float16),
                      p + "post_attention_layernorm.weight": np.ones(d, np.float16),
                      p + "self_attn.q_proj.weight": r(d, d), p + "self_attn.k_proj.weight":
                      r(kv, d), p + "self_attn.v_proj.weight": r(kv, d),
                      p + "self_attn.o_proj.weight": r(d, d), p + "mlp.gate_proj.weight": r(f, d),
                      p + "mlp.up_proj.weight": r(f, d), p + "mlp.down_proj.weight": r(d, f)}
        save_file(shard, str(folder / f"model-{first // BLOCKS_PER_SHARD:05d}.safetensors"))
        del shard
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e9


def _memory_gb() -> dict:
    """This process's resident memory now and its peak so far (VmRSS, VmHWM), in GB."""
    status = dict(line.split(":", 1) for line in
                  Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(status[k].split()[0]) / 1e6 for k in ("VmRSS", "VmHWM")}


def measure(method: str, folder: Path, out: Path, ids: np.ndarray, blocks: int | None,
            quick: bool = False) -> dict:
    """One method over the checkpoint: seconds and peak RSS after each block."""
    from tfcompress.models.lean import lean_compress

    rows = []

    def on_block(index: int, seconds: float) -> None:
        mem = _memory_gb()
        rows.append({"block": index, "seconds": round(seconds, 2),
                     "rss_gb": round(mem["VmRSS"], 3), "peak_rss_gb": round(mem["VmHWM"], 3)})
        print(f"{method} block {index}: {seconds:.1f} s, RSS {mem['VmRSS']:.2f} GB "
              f"(peak {mem['VmHWM']:.2f})", flush=True)

    start = time.perf_counter()
    lean_compress(folder, out, method_config(method, quick), ids, n_blocks=blocks,
                  on_block=on_block, verbose=0)
    done = [r for r in rows if blocks is None or r["block"] < blocks]
    return {"blocks_compressed": len(done), "per_block": done,
            "seconds_per_block": round(float(np.mean([r["seconds"] for r in done])), 2),
            "total_s": round(time.perf_counter() - start, 1),
            "peak_rss_gb": round(_memory_gb()["VmHWM"], 3)}


def _child(method: str, folder: Path, out: Path, args) -> dict:
    """`measure` in a fresh interpreter (its VmHWM is this method's peak alone)."""
    command = [sys.executable, "-m", "benchmarks.big_model", "--child", method, "--folder",
               str(folder), "--out", str(out), "--calib", str(args.calib), "--calib-len",
               str(args.calib_len)] + (["--blocks", str(args.blocks)] if args.blocks else [])
    lines = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True,
                           cwd=Path(__file__).resolve().parents[1]).stdout.splitlines()
    print("\n".join(lines[:-1]), flush=True)
    return json.loads(lines[-1])


def _table(data: dict) -> str:
    head = ("| method | blocks | s / block | total s | peak RSS GB |\n"
            "|---|---:|---:|---:|---:|\n")
    return head + "".join(
        f"| {m} | {r['blocks_compressed']} | {r['seconds_per_block']} | {r['total_s']} | "
        f"{r['peak_rss_gb']} |\n" for m, r in data["methods"].items())


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("big_model", __doc__)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--blocks", type=int, default=None,
                        help="compress only the first N blocks (a partial run)")
    parser.add_argument("--calib", type=int, default=4, help="calibration windows")
    parser.add_argument("--calib-len", type=int, default=256, help="tokens per window")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parse_args(parser, argv)
    shape = QUICK_SHAPE if args.quick else SHAPE
    if args.quick:
        args.calib, args.calib_len = 2, 16
    ids = np.random.default_rng(1).integers(0, shape["vocab_size"], (args.calib, args.calib_len))
    if args.child:
        print(json.dumps(measure(args.child, Path(args.folder), Path(args.out), ids,
                                 args.blocks)))
        return
    scratch = scratch_dir("big-model-")
    start = time.perf_counter()
    gb = write_checkpoint(scratch / "checkpoint", shape)
    print(f"checkpoint: {gb:.2f} GB in {time.perf_counter() - start:.0f} s", flush=True)
    results = {}
    for method in args.methods:
        out = scratch / method
        results[method] = (measure(method, scratch / "checkpoint", out, ids, args.blocks, True)
                           if args.quick else _child(method, scratch / "checkpoint", out, args))
    data = {"shape": shape, "checkpoint_gb": round(gb, 2), "dtype": "float16",
            "calibration_tokens": int(ids.size), "blocks_requested": args.blocks,
            "methods": results, "target_peak_rss_gb_gptq": TARGET_GPTQ_GB}
    if "gptq" in results:
        data["peak_rss_gb_gptq"] = results["gptq"]["peak_rss_gb"]
    write_results("big_model", _table(data), data, args)


if __name__ == "__main__":
    main()
