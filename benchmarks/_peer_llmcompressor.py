"""The llm-compressor peer of ``benchmarks/llm.py``: GPTQ W4A16 or SparseGPT 50 % on SmolLM2.

Runs in its own interpreter (torch, transformers, gguf, llmcompressor; never tensorflow or
tfcompress), so this file imports neither: ``python -m benchmarks.llm --peer PYTHON`` writes
the calibration and evaluation token ids to ``.npy`` files and runs, once per method,

    PYTHON -m benchmarks._peer_llmcompressor --gguf FILE --calib calib.npy --eval eval.npy \
        --window 256 --method gptq_w4a16_g128 --out result.json

The GGUF is read by transformers (``gguf_file=``, dequantized to float32: the same weights
as `tfcompress.models.loaders.load_gguf`). Perplexity follows
`tfcompress.models.causal_lm_perplexity`: consecutive windows of ``--window`` targets, each
without context from the one before. ``result.json`` holds ``ppl``, ``seconds`` (the
``oneshot`` call only), ``peak_rss_gb`` (this process while ``oneshot`` runs, sampled every
0.2 s, the float model included, as the benchmark's own figure) and the versions.
The peer environment (a CPU torch; see ``benchmarks/peer-requirements.txt``):

    python3.11 -m venv .venv-peer
    .venv-peer/bin/pip install torch==2.13.0     # a CPU build first (see the file)
    .venv-peer/bin/pip install -r benchmarks/peer-requirements.txt
"""

from __future__ import annotations

import argparse
import atexit
import importlib.metadata
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._rss import PeakRSS

# SmolLM2's 576-column kernels have no whole number of 128-column groups, and
# compressed-tensors refuses them (g128 fails; g64 and g192, which divide 576 and 1536, run)
METHODS = ("float", "gptq_w4a16_g128", "gptq_w4a16_g64", "gptq_w4a16_g192", "sparsegpt_50")


def perplexity(model, ids: np.ndarray, window: int) -> float:
    """exp(mean NLL) of every token after the first, in independent windows of ``window``."""
    import torch

    nll, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, ids.size - 1, window):
            x = torch.as_tensor(ids[None, s:min(s + window, ids.size - 1)], dtype=torch.long)
            y = torch.as_tensor(ids[None, s + 1:s + 1 + window], dtype=torch.long)
            logits = model(input_ids=x).logits.float()
            nll += torch.nn.functional.cross_entropy(logits[0], y[0], reduction="sum").item()
            count += y.numel()
    return float(np.exp(nll / count))


def recipe(method: str):
    """``gptq_w4a16_g<N>``: W4A16 (symmetric int4 weights in groups of N, activation order
    "static": llm-compressor's defaults) on every Linear but the head; ``sparsegpt_50``."""
    if method.startswith("gptq_w4a16_g"):
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
        from llmcompressor.modifiers.quantization import GPTQModifier

        weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group",
                                   group_size=int(method.rsplit("g", 1)[1]))
        return GPTQModifier(config_groups={"group_0": QuantizationScheme(
            targets=["Linear"], weights=weights)}, ignore=["lm_head"])
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

    # targets as a list: a plain string "Linear" matches no module (the run prunes nothing)
    return SparseGPTModifier(sparsity=0.5, mask_structure="0:0", targets=["Linear"],
                             ignore=["re:.*lm_head"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._peer_llmcompressor",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--calib", required=True, help=".npy (sequences, tokens) int ids")
    parser.add_argument("--eval", required=True, help=".npy 1-D int ids")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4, help="calibration sequences per batch")
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--out", required=True, help="result .json")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(args.gguf)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32)
    model.eval()
    result: dict = {"method": args.method, "load_seconds": round(time.perf_counter() - start, 1),
                    "torch_threads": torch.get_num_threads()}
    calib = np.load(args.calib).astype(np.int64)
    if args.method != "float":
        from llmcompressor import oneshot
        from torch.utils.data import DataLoader

        rows = [{"input_ids": torch.as_tensor(r), "attention_mask": torch.ones(len(r),
                                                                               dtype=torch.long)}
                for r in calib]
        loader = DataLoader(rows, batch_size=args.batch, shuffle=False)
        # oneshot insists on a processor when given data (though the data is token ids),
        # re-reads the config from model.config.name_or_path (no config.json beside a GGUF)
        # and refuses a config whose quantization_config names gguf: transformers has
        # dequantized every weight to float32, so the config is saved without it
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        folder = tempfile.mkdtemp(prefix="peer-llmcompressor-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        model.config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        model.config.name_or_path = folder
        start = time.perf_counter()
        with PeakRSS() as peak:
            model = oneshot(model=model, tokenizer=tokenizer, dataset=loader,
                            recipe=recipe(args.method),
                            num_calibration_samples=len(calib),
                            max_seq_length=calib.shape[1]) or model
        result |= {"seconds": round(time.perf_counter() - start, 1),
                   "peak_rss_gb": round(peak.gb, 2),
                   "calibration": f"{calib.shape[0]} x {calib.shape[1]} tokens"}
        linear = [m.weight for n, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
        result["zero_share"] = float(sum((w == 0).sum().item() for w in linear)
                                     / sum(w.numel() for w in linear))
        if args.method.startswith("sparsegpt") and result["zero_share"] < 0.45:
            raise RuntimeError(f"{args.method} left {result['zero_share']:.1%} of Linear "
                               "weights zero: the modifier matched no layer")
    start = time.perf_counter()
    result["ppl"] = perplexity(model, np.load(args.eval), args.window)
    result["eval_seconds"] = round(time.perf_counter() - start, 1)
    result["versions"] = {n: importlib.metadata.version(n) for n in
                          ("torch", "transformers", "llmcompressor", "compressed-tensors")}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
