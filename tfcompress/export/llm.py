"""Keras LM -> an on-device bundle: one ``.tflite`` with ``prefill`` and ``decode``
signatures over an external KV cache, its tokenizer, and ``llm.json``.

Signatures follow the LiteRT-Torch generative converter (what LiteRT-LM and MediaPipe's LLM
Inference drive): inputs ``tokens`` (int32 ``[1, n]``), ``input_pos`` (int32 ``[n]``),
``kv_cache_k_{i}`` / ``kv_cache_v_{i}`` (float32 ``[1, kv_heads, cache_length, head_dim]``, the
layout LiteRT-LM's engine reads the cache length from);
outputs the updated caches under the same names, plus ``logits`` (``[1, 1, vocab]``) for
``decode``. One prefill length gives a signature ``prefill``; several give ``prefill_{n}``.
Like LiteRT-Torch's default, prefill returns no logits: a runtime prefills all prompt tokens
but the last, then decodes the last one.

Cache-length buckets: attention reads every cache slot it is given, so a step's cost follows
the cache's capacity. For each bucket ``B`` of ``cache_buckets`` the file also holds
``decode_{B}`` and ``cache{B}_prefill_{n}`` (each prefill length ``n <= B``): the same maths
over a cache of ``B`` positions, in the same ``[1, kv_heads, B, head_dim]`` layout. They share
the weight tensors of the full-length signatures (one copy in the file). LiteRT-LM drives the
signature named exactly ``decode`` and takes every signature whose name starts with
``prefill`` as a prefill runner keyed by its ``input_pos`` length (fed the full-length cache
buffers), so bucket signatures are named not to start with ``prefill``: LiteRT-LM runs the
full-length ones as before. `LLMRunner` holds one cache per bucket it has reached and runs
each call on the smallest bucket that holds the tokens, copying the filled positions into the
next bucket's cache once when the tokens outgrow one (the position axis is not the outermost
one in this layout, so a bucket's cache cannot be a view of a longer one).

Example:
    >>> result = export_llm(model, "bundle/", prefill_lengths=(32, 128), cache_length=1024,
    ...                     mode="dynamic_int8", tokenizer=tokenizer)
    >>> LLMRunner("bundle/").generate("It is a truth", max_new_tokens=20)
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfcompress.core.files import write_atomic
from tfcompress.core.progress import print_msg
from tfcompress.errors import TfcompressError, VerificationError
from tfcompress.export.llm_budget import BudgetPlan, budget_plan, check_budget, float_weights
from tfcompress.export.llm_graph import Decoder, cached_forward, decoder_of
from tfcompress.export.llm_int4 import llm_scopes, quantize_int4
from tfcompress.export.llm_integer import (
    INTEGER_LLM_MODES,
    SinkPrefix,
    calibration_samples,
    share_ranges,
    sink_prefix,
    twin_tensors,
)
from tfcompress.export.llm_layout import (
    CONFIG_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    bucket_signature_names,
    cache_names,
    prefill_signature_names,
)
from tfcompress.export.llm_rotation import choose_rotation
from tfcompress.export.llm_tied import share_tied_table
from tfcompress.export.modes import INT4_BLOCK, LLM_MODES, MODES, check_int4_blocks
from tfcompress.export.ops import inspect_tflite
from tfcompress.export.shared_quant import share_quantization
from tfcompress.export.verification import Tolerances, agreement_stats, discard, verify
from tfcompress.quantize.rotate import rotate as rotate_model

# cache_buckets="auto": powers of two from this length up to below cache_length (shorter
# caches cost little to attend over in full)
MIN_AUTO_BUCKET = 256
KV_CACHE_DTYPES = ("float32", "float16")
# tokens of text the bundle is verified on (one decode step each: ~2 s for SmolLM2 int8)
VERIFY_TOKENS = 128


@dataclass
class LLMExportResult:
    """Where the bundle went, what is in it, and how its logits compare with Keras."""

    directory: str
    tflite: str
    mode: str
    bytes: int
    signatures: dict = field(default_factory=dict)
    ops: dict = field(default_factory=dict)
    tensor_dtypes: dict = field(default_factory=dict)
    not_delegated: dict = field(default_factory=dict)
    # mode="int4": which quantized layers kept their codes exactly, which LiteRT re-rounded
    int4: dict | None = None
    # `rotate`'s seed and online flag when the residual stream was rotated first
    rotation: dict | None = None
    max_abs_error: float | None = None
    relative_error: float | None = None
    agreement: float | None = None
    # on text: perplexity of the bundle and of Keras over the same tokens
    perplexity: float | None = None
    keras_perplexity: float | None = None
    verified_on: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def check_cache_buckets(cache_buckets, cache_length: int) -> tuple[int, ...]:
    """``"auto"``: powers of two from `MIN_AUTO_BUCKET` below ``cache_length``; else
    distinct integers in ``[1, cache_length)`` (``()`` or None: no buckets)."""
    if isinstance(cache_buckets, str):
        if cache_buckets != "auto":
            raise TfcompressError(f"cache_buckets must be 'auto', None or cache lengths below "
                                  f"cache_length ({cache_length}), got {cache_buckets!r}")
        buckets, b = [], MIN_AUTO_BUCKET
        while b < cache_length:
            buckets.append(b)
            b *= 2
        return tuple(buckets)
    if cache_buckets is None:
        return ()
    try:
        buckets = [int(b) for b in cache_buckets]
        good = all(int(b) == b for b in cache_buckets)
    except (TypeError, ValueError):
        good = False
    if not good or any(not 1 <= b < cache_length for b in buckets) or len(set(buckets)) != len(
            buckets):
        raise TfcompressError(f"cache_buckets must be 'auto', None or distinct cache lengths in "
                              f"[1, {cache_length}) (below cache_length), got {cache_buckets!r}")
    return tuple(sorted(buckets))


def _check_lengths(prefill_lengths, cache_length) -> tuple[int, ...]:
    try:
        lengths = tuple(sorted({int(n) for n in prefill_lengths}))
    except (TypeError, ValueError):
        raise TfcompressError(f"prefill_lengths must be positive integers, got "
                              f"{prefill_lengths!r}") from None
    if not lengths or lengths[0] < 1 or any(
            int(n) != n for n in prefill_lengths):
        raise TfcompressError(f"prefill_lengths must be positive integers, got "
                              f"{prefill_lengths!r}")
    if not isinstance(cache_length, int | np.integer) or cache_length < 1:
        raise TfcompressError(f"cache_length must be a positive integer, got {cache_length!r}")
    if cache_length < lengths[-1]:
        raise TfcompressError(f"cache_length ({cache_length}) is below the prefill length "
                              f"{lengths[-1]}: the cache must hold a whole prefill")
    return lengths


def _tokenizer_info(tokenizer, vocab_size: int) -> tuple[str | None, dict]:
    """``(tokenizer.json text, special token ids)`` from a tokenizer object, a
    ``tokenizer.json`` path, or a GGUF file (its BPE tokenizer and BOS/EOS ids)."""
    if tokenizer is None:
        return None, {}
    special: dict = {}
    if isinstance(tokenizer, str | Path):
        path = Path(tokenizer)
        if not path.is_file():
            raise TfcompressError(f"tokenizer file {str(path)!r} does not exist")
        if path.suffix == ".gguf":
            from tfcompress.models.loaders.gguf import _field, _reader, gguf_tokenizer

            reader = _reader(path)
            eos = _field(reader, "tokenizer.ggml.eos_token_id", None, required=False)
            if eos is not None:
                special["eos"] = int(eos)
            # "bos" in a bundle means: start every prompt with it (llama.cpp's add_bos_token)
            if _field(reader, "tokenizer.ggml.add_bos_token", False, required=False):
                special["bos"] = int(_field(reader, "tokenizer.ggml.bos_token_id"))
            tokenizer = gguf_tokenizer(path)
        else:
            from tfcompress.data.tokenizers import tokenizer_from_json

            tokenizer = tokenizer_from_json(path.read_text(encoding="utf-8"))
    if not hasattr(tokenizer, "to_json") or not hasattr(tokenizer, "encode"):
        raise TfcompressError(f"tokenizer must be a tfcompress tokenizer, a tokenizer.json or a "
                              f".gguf path, got {type(tokenizer).__name__}")
    if tokenizer.vocab_size > vocab_size:
        raise TfcompressError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's "
                              f"vocabulary is {vocab_size}")
    return tokenizer.to_json(), special


def signature_plan(prefill_names: dict[str, int], cache_length: int,
                   buckets: dict[int, dict]) -> dict[str, tuple[int, int, bool]]:
    """Every signature of the file: ``name -> (tokens, cache length, returns logits)``.

    Example:
        >>> signature_plan({"prefill": 8}, 64, bucket_signature_names((8,), (16,)))
        {'prefill': (8, 64, False), 'decode': (1, 64, True), 'cache16_prefill_8': (8, 16, \
False), 'decode_16': (1, 16, True)}
    """
    plan = {name: (n, cache_length, False) for name, n in prefill_names.items()}
    plan["decode"] = (1, cache_length, True)
    for b, names in buckets.items():
        plan.update({name: (n, b, False) for name, n in names["prefill"].items()})
        plan[names["decode"]] = (1, b, True)
    return plan


def _save_cached_lm(dec: Decoder, plan: dict[str, tuple[int, int, bool]],
                    directory: str, kv_cache_dtype: str = "float32",
                    prefix: SinkPrefix | None = None) -> None:
    """Write a SavedModel whose signatures (`signature_plan`) are the cached forward passes
    over ``dec``'s weights (held as variables, so every signature shares them), with
    ``prefix``'s float constants at its positions.
    ``dec.weights`` is emptied as the variables are made and nothing stays alive after the
    return, so conversion does not hold a second copy."""
    import tensorflow as tf

    module = tf.Module()
    module.weights = {}
    # the variables of the Keras layers a user adapter's callables use, tracked so that the
    # SavedModel holds them (a Keras 3 layer does not track nested lists of layers for it)
    module.decoder_variables = [getattr(v, "value", v) for m in dec.modules for v in m.weights]
    weights = {}
    for name in list(dec.weights):
        value = dec.weights.pop(name)
        var = ([tf.Variable(m, trainable=False) for m in value] if isinstance(value, list)
               else tf.Variable(value, trainable=False))
        module.weights[name.replace(".", "__")] = weights[name] = var
    names = cache_names(dec.n_layers)

    def signature(n: int, cache_length: int, logits: bool):
        cache_spec = (1, dec.n_kv_heads, cache_length, dec.head_dim)
        specs = [tf.TensorSpec((1, n), tf.int32, "tokens"),
                 tf.TensorSpec((n,), tf.int32, "input_pos"),
                 *(tf.TensorSpec(cache_spec, kv_cache_dtype, name) for name in names)]

        def fn(tokens, input_pos, *caches):
            out, ks, vs = cached_forward(dec, weights, tokens, input_pos, list(caches[0::2]),
                                         list(caches[1::2]), logits, prefix)
            result = dict(zip(names, (c for pair in zip(ks, vs, strict=True) for c in pair),
                              strict=True))
            if logits:
                result["logits"] = out
            return result

        return tf.function(fn, input_signature=specs)

    signatures = {name: signature(*spec) for name, spec in plan.items()}
    tf.saved_model.save(module, directory, signatures=signatures)


def _convert(dec: Decoder, plan: dict[str, tuple[int, int, bool]], mode: str,
             kv_cache_dtype: str = "float32", budget: BudgetPlan | None = None,
             integer: tuple | None = None) -> tuple[bytes, dict | None]:
    """The flatbuffer, and for ``int4`` the report of `quantize_int4` (with ``budget``'s
    choice of int8 maps under ``"budget"``); an integer mode's ``integer`` is its
    ``(SinkPrefix, calibration samples)``."""
    import tensorflow as tf

    from tfcompress.export.converter import litert_quantize

    spec_mode = MODES[mode]
    linear = llm_scopes(name[:-2] for name in dec.weights if name.endswith(".w"))
    tied = "head.w" not in dec.weights  # read before _save_cached_lm empties dec.weights
    # a rotated model's d x d final_mix precedes every logit: int8 per channel, as the head
    keep8 = ("final_mix",) if "final_mix.w" in dec.weights else ()
    with tempfile.TemporaryDirectory() as tmp:
        _save_cached_lm(dec, plan, tmp, kv_cache_dtype, integer and integer[0])
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(plan))
        spec_mode.configure(converter, None, False)
        flatbuffer = converter.convert()
    if integer is not None:
        twins = twin_tensors(flatbuffer)
        return litert_quantize(flatbuffer, spec_mode.litert_recipe, integer[1], float_io=True,
                               widen=lambda ranges: share_ranges(ranges, twins)), None
    if mode == "int4" and budget is None:
        return quantize_int4(flatbuffer, linear, list(dec.quantized), tied, dec.codes,
                             int8=keep8, share=True)
    if mode == "int4":
        over = 0  # the file's bytes are estimated: an overshoot shrinks the next try's spare
        while True:
            int8 = budget.choose(len(flatbuffer), over)["int8"]
            out, report = quantize_int4(flatbuffer, linear, list(dec.quantized), tied,
                                        dec.codes, int8=tuple(int8) + keep8,
                                        floats=budget.floats, share=True)
            if len(out) <= budget.budget_bytes:
                return out, {**report, "budget": budget.report}
            if not int8:
                raise TfcompressError(f"budget_mb={budget.budget_bytes / 1e6:g} is below the "
                                      f"all-int4 bundle ({len(out) / 1e6:.6f} MB)")
            over += len(out) - budget.budget_bytes
    if tied and mode == "dynamic_int8":  # the converter stores the tied table twice
        return share_tied_table(flatbuffer, share=True)[0], None
    return share_quantization(flatbuffer)[0], None


def _check_int4_blocks(dec: Decoder) -> None:
    """The LLM's matmuls (its int8 head aside) against LiteRT's int4 blocks."""
    check_int4_blocks(
        {name[:-2]: [m.shape[0] for m in mats] for name, mats in dec.weights.items()
         if name.endswith(".w") and name != "head.w"},
        f"use mode='dynamic_int8', or sizes (ranks) that are multiples of {INT4_BLOCK}")


def export_llm(
    model,
    path: str | Path,
    *,
    prefill_lengths=(32, 128, 512),
    cache_length: int = 1024,
    cache_buckets=None,
    kv_cache_dtype: str = "float32",
    mode: str = "dynamic_int8",
    rotate: bool | None = None,
    tokenizer=None,
    special_tokens: dict | None = None,
    verify_output: bool = True,
    verify_text=None,
    budget_mb: float | None = None,
    calibration=None,
    float_model=None,
    verbose: int = 1,
) -> LLMExportResult:
    """Write the bundle folder ``path``: ``model.tflite``, ``tokenizer.json``, ``llm.json``.

    ``model``: a decoder-only LM with an adapter (`tfcompress.models.decoders`: `build_llama`,
    `build_gpt`, KerasHub's GPT2, Llama(3), Mistral, Qwen2/3, Gemma(3), Phi3, SmolLM3, or yours
    via `tfcompress.models.register_decoder`), float or compressed (quantized layers are
    decoded and re-quantized by LiteRT; low-rank layers stay two matrices).
    ``mode``: ``float32``, ``float16``, ``dynamic_int8`` (int8 per-channel weights) or ``int4``
    (LiteRT's blockwise int4, `tfcompress.export.llm_int4`: codes on LiteRT's own grid,
    ``GPTQConfig.litert_int4()``, are kept exactly, any other rounded onto it, as ``int4``'s
    ``copied``/``rerounded`` say), or full integer ``int16x8`` / ``int8_static`` (int16 /
    int8 activations, int8 weights, `export.llm_integer`: BOS's keys, values and logits
    float constants at position 0, so a bundle starts with BOS; one float32 cache length).
    ``rotate``: None rotates a Llama-family model first for the integer modes, True in any
    mode, False never (`export.llm_rotation`); the bundle is verified against ``model``.
    Tied tables and scales once (`llm_tied`, `shared_quant`).
    ``cache_buckets``: shorter cache lengths with their own decode/prefill signatures over the
    cache's first positions, so a step costs what the tokens need, not the capacity;
    ``"auto"`` (powers of two from 256) or None (default: each bucket adds conversion time
    and memory). ``kv_cache_dtype``: ``float32`` or ``float16`` (half the cache's bytes).
    ``tokenizer``: a tfcompress tokenizer, a ``tokenizer.json`` or a ``.gguf`` (its BPE
    tokenizer and BOS/EOS ids); ``special_tokens`` (e.g. ``{"bos": 1, "eos": 2}``) overrides
    the ids. ``verify_output`` compares the bundle's logits with Keras's on `VERIFY_TOKENS`
    tokens of ``verify_text`` (text or ids; default: the bundled Austen test text, or random
    ids without a tokenizer); any figure beyond the mode's tolerances (`export.verification`,
    as `export_tflite`) raises `VerificationError`, keeping no ``model.tflite``.
    ``calibration`` (ids ``(windows, n)``; default: 4 x 128 tokens of Austen train text):
    an integer mode's ranges come from it (windows as long as the contexts you will run).
    ``budget_mb`` (int4 only): the file's MB; the maps whose int4 rounding adds most output
    error per byte on ``calibration`` stay
    int8 until it is spent (`tfcompress.export.llm_budget`), rounded from ``float_model``'s
    weights if given (the float model a quantized ``model`` came from; int4 keeps its codes;
    the bundle is then verified against the weights it carries, `reference_logits`).

    Example:
        >>> export_llm(model, "bundle/", prefill_lengths=(8,), cache_length=64,
        ...            mode="float32").signatures
        {'prefill': {...}, 'decode': {...}}
    """
    lengths, buckets, dec, tokenizer_json, special, calibration, floats = _check_arguments(
        model, path, prefill_lengths, cache_length, cache_buckets, kv_cache_dtype, mode,
        tokenizer, special_tokens, verify_text, budget_mb, calibration, float_model)
    dec, rotation = _export_decoder(model, dec, mode, rotate, float_model, verbose)
    path, start = Path(path), time.perf_counter()
    plan = signature_plan(names := prefill_signature_names(lengths), cache_length, buckets)
    if verbose:
        print_msg(f"export_llm: {dec.kind} model, {dec.n_layers} layers -> {mode}, signatures "
                  f"{list(plan)}, cache {cache_length}")
    budget, integer = _calibrated(dec, plan, mode, special.get("bos"), calibration, budget_mb,
                                  floats, verbose)
    flatbuffer, int4 = _convert(dec, plan, mode, kv_cache_dtype, budget, integer)
    config = _bundle_config(dec, mode, cache_length, lengths, names, buckets, kv_cache_dtype,
                            special, tokenizer_json is not None, int4,
                            integer[0].ids if integer else (), rotation)
    tflite = _write_bundle(path, flatbuffer, tokenizer_json, config)
    result = _result(path, tflite, mode, flatbuffer, plan, int4, rotation)
    if verify_output:
        _verify_or_remove(model, budget, path, dec, MODES[mode], result, verify_text)
    result.seconds = time.perf_counter() - start
    if verbose:
        _print_result(result, tflite, verify_output)
    return result


def _export_decoder(model, dec: Decoder, mode: str, rotate: bool | None, float_model,
                    verbose: int) -> tuple[Decoder, dict | None]:
    """``dec``, or the decoder of ``model`` rotated first (`choose_rotation`), and the
    rotation's arguments."""
    rotation, why = choose_rotation(model, mode, rotate, float_model)
    if verbose and (rotation is not None or mode in INTEGER_LLM_MODES):
        print_msg(f"export_llm: residual stream {'rotated' if rotation else 'not rotated'} "
                  f"({why})")
    if rotation is None:
        return dec, None
    rotated = rotate_model(model, rotation["seed"], online=rotation["online"], verbose=verbose)
    return decoder_of(rotated), rotation


def _calibrated(dec: Decoder, plan: dict, mode: str, bos: int | None, calibration, budget_mb,
                floats, verbose: int) -> tuple[BudgetPlan | None, tuple | None]:
    """What the calibration text sets: ``budget_mb``'s int8 maps, an integer mode's inputs."""
    budget = (None if budget_mb is None
              else budget_plan(dec, budget_mb, calibration, verbose, floats))
    integer = (_integer_inputs(dec, plan, bos, calibration, verbose)
               if mode in INTEGER_LLM_MODES else None)
    return budget, integer


def _result(path: Path, tflite: Path, mode: str, flatbuffer: bytes, plan: dict,
            int4: dict | None, rotation: dict | None) -> LLMExportResult:
    """The result of a written bundle, before verification."""
    info = inspect_tflite(flatbuffer)  # of the first signature's graph
    signatures = {name: {"tokens": n, "cache_length": c} for name, (n, c, _) in plan.items()}
    return LLMExportResult(str(path), str(tflite), mode, len(flatbuffer), signatures,
                           info["ops"], info["tensor_dtypes"], info["not_delegated"], int4=int4,
                           rotation=rotation)


def _integer_inputs(dec: Decoder, plan: dict, bos: int, calibration: np.ndarray,
                    verbose: int) -> tuple[SinkPrefix, list]:
    """An integer mode's BOS constants and calibration samples (from ``dec.weights``, which
    `_convert` empties)."""
    prefix = sink_prefix(dec, bos)
    samples = calibration_samples(dec, plan, calibration, prefix)
    if verbose:
        print_msg(f"export_llm: BOS (id {bos}) kept float at position 0; {len(samples)} "
                  f"calibration samples from {len(calibration)} windows of "
                  f"{calibration.shape[-1]} tokens")
    return prefix, samples


def _write_bundle(path: Path, flatbuffer: bytes, tokenizer_json, config: dict) -> Path:
    """The bundle's files, each written whole or not at all; returns the model file's path."""
    path.mkdir(parents=True, exist_ok=True)
    tflite = path / MODEL_FILE
    write_atomic(tflite, flatbuffer)
    if tokenizer_json is not None:
        write_atomic(path / TOKENIZER_FILE, tokenizer_json)
    write_atomic(path / CONFIG_FILE, json.dumps(config, indent=2))
    return tflite


def _verify_or_remove(model, budget: BudgetPlan | None, path: Path, dec: Decoder, spec,
                      result: LLMExportResult, verify_text) -> None:
    """`_verify` against ``model`` (with a ``budget``'s int8 maps from float weights),
    removing the bundle's model file when it fails (as `export_tflite`: a failed file must
    not sit there looking shippable)."""
    bought = (budget.report["int8_from_float"] if budget else ())
    reference = reference_logits(model, {name: budget.floats[name] for name in bought})
    try:
        _verify(reference, path, dec, spec, result, verify_text)
    except VerificationError as err:
        raise discard(result.tflite, err) from None


def _check_arguments(model, path, prefill_lengths, cache_length, cache_buckets,
                     kv_cache_dtype, mode, tokenizer, special_tokens, verify_text, budget_mb,
                     calibration, float_model) -> tuple:
    """`export_llm`'s checks, all before any work: ``(prefill lengths, buckets, decoder,
    tokenizer JSON, special token ids, calibration ids, float weights of quantized maps)``."""
    from tfcompress.export.tflite import _check_litert

    if mode not in LLM_MODES:
        raise TfcompressError(f"mode must be one of {list(LLM_MODES)}, got {mode!r}")
    lengths = _check_lengths(prefill_lengths, cache_length)
    buckets = bucket_signature_names(lengths, check_cache_buckets(cache_buckets, cache_length))
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise TfcompressError(f"kv_cache_dtype must be one of {list(KV_CACHE_DTYPES)}, got "
                              f"{kv_cache_dtype!r}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TfcompressError(f"path must be a folder for the bundle, got the file {str(path)!r}")
    _check_litert(MODES[mode])
    dec = decoder_of(model)
    if dec.max_positions is not None and cache_length > dec.max_positions:
        raise TfcompressError(f"cache_length ({cache_length}) exceeds the model's "
                              f"{dec.max_positions} learned positions")
    if mode == "int4":
        _check_int4_blocks(dec)
    if budget_mb is not None:
        if mode != "int4":
            raise TfcompressError(f"budget_mb chooses int8 or int4 per layer: it needs "
                                  f"mode='int4', got mode={mode!r}")
        check_budget(dec, budget_mb)
    tokenizer_json, special = _tokenizer_info(tokenizer, dec.vocab_size)
    special = {**special, **(special_tokens or {})}
    bad = {k: v for k, v in special.items() if not 0 <= int(v) < dec.vocab_size}
    if bad:
        raise TfcompressError(f"special_tokens must be ids in [0, {dec.vocab_size}), got {bad}")
    _check_verify_text(verify_text, tokenizer_json, dec.vocab_size)
    if mode in INTEGER_LLM_MODES:
        _check_integer(mode, special, lengths, cache_length, cache_buckets, kv_cache_dtype)
    if budget_mb is not None or mode in INTEGER_LLM_MODES:
        calibration = _calibration_ids(calibration, tokenizer_json, dec.vocab_size)
    elif calibration is not None:
        raise TfcompressError(f"calibration is what budget_mb's sensitivity is measured on "
                              f"and an integer mode's ranges ({', '.join(INTEGER_LLM_MODES)}): "
                              f"give budget_mb or such a mode too, or no calibration")
    elif float_model is not None:
        raise TfcompressError("float_model is what budget_mb's int8 maps are rounded from: "
                              "give budget_mb too, or no float_model")
    floats = None if float_model is None else float_weights(dec, decoder_of(float_model))
    return lengths, buckets, dec, tokenizer_json, special, calibration, floats


def _check_integer(mode: str, special: dict, lengths, cache_length: int, cache_buckets,
                   kv_cache_dtype: str) -> None:
    """What an integer mode needs: a BOS (its float sink prefix), positions after it for
    every prefill, one float32 cache length."""
    if "bos" not in special:
        raise TfcompressError(f"mode={mode!r} keeps BOS's keys and values float at position 0: "
                              f"give special_tokens={{'bos': id}} or a .gguf tokenizer that "
                              f"adds one, got special tokens {special}")
    if lengths[-1] >= cache_length:
        raise TfcompressError(f"mode={mode!r} prefills after BOS: prefill_lengths must be "
                              f"below cache_length ({cache_length}), got {list(lengths)}")
    if cache_buckets or kv_cache_dtype != "float32":
        raise TfcompressError(f"mode={mode!r} calibrates one float32 cache: give "
                              f"cache_buckets=None and kv_cache_dtype='float32', got "
                              f"{cache_buckets!r} and {kv_cache_dtype!r}")


def _bundle_config(dec: Decoder, mode: str, cache_length: int, lengths, names: dict,
                   buckets: dict, kv_cache_dtype: str, special: dict, has_tokenizer: bool,
                   int4: dict | None, prefix_ids: tuple = (), rotation: dict | None = None
                   ) -> dict:
    """The bundle's ``llm.json``: what `LLMRunner` and `write_litertlm` read; an integer
    bundle's ``prefix_ids`` as ``sink_prefix``, the ids an engine must feed at positions
    0.. (`LLMRunner` refuses others); ``rotation`` as it was applied (the weights carry it)."""
    config = {
        "format": "tfcompress-llm/1", "model_file": MODEL_FILE,
        "tokenizer_file": TOKENIZER_FILE if has_tokenizer else None,
        "mode": mode, "architecture": dec.describe(), "vocab_size": dec.vocab_size,
        "cache_length": int(cache_length), "prefill_lengths": list(lengths),
        "signatures": {"prefill": names, "decode": "decode",
                       "buckets": {str(b): v for b, v in buckets.items()}},
        "inputs": ["tokens", "input_pos", "kv_cache_k_{i}", "kv_cache_v_{i}"],
        "outputs": {"prefill": ["kv_cache_k_{i}", "kv_cache_v_{i}"],
                    "decode": ["logits", "kv_cache_k_{i}", "kv_cache_v_{i}"]},
        "kv_cache_shape": [1, dec.n_kv_heads, int(cache_length), dec.head_dim],
        "kv_cache_dtype": kv_cache_dtype,
        "special_tokens": {k: int(v) for k, v in special.items()},
        "stop_ids": [int(special["eos"])] if "eos" in special else [],
    }
    if int4 is not None:
        config["int4"] = int4
    if prefix_ids:
        config["sink_prefix"] = [int(t) for t in prefix_ids]
    if rotation is not None:
        config["rotation"] = rotation
    return config


def _print_result(result: LLMExportResult, tflite: Path, verified: bool) -> None:
    int4 = result.int4
    if int4 is not None:
        print_msg(f"export_llm: int4 codes kept exactly for {len(int4['copied'])} quantized "
                  f"layers, re-rounded for {len(int4['rerounded'])} {int4['rerounded'][:4]}; "
                  f"embedding {int4['embedding']}")
        if "budget" in int4:
            budget = int4["budget"]
            print_msg(f"export_llm: budget {budget['budget_mb']:g} MB: "
                      f"{len(budget['int8'])} of {len(budget['layers'])} maps int8 "
                      f"{budget['int8'][:6]}")
    if verified:
        print_msg(f"export_llm: {tflite} {result.bytes:,} bytes; on {result.verified_on}: "
                  f"next-token agreement with Keras {result.agreement:.1%}, max |error| "
                  f"{result.max_abs_error:.3g} ({result.relative_error:.3g} of the largest logit)"
                  + ("" if result.perplexity is None else
                     f", perplexity {result.perplexity:.3f} vs Keras "
                     f"{result.keras_perplexity:.3f}"))
    else:
        print_msg(f"export_llm: {tflite} {result.bytes:,} bytes (not verified)")


def keras_logits(model):
    """``ids (batch, n) -> logits`` of a Keras LM, passing KerasHub task models the
    ``token_ids``/``padding_mask`` dict they expect."""
    import tensorflow as tf

    hub = isinstance(getattr(model, "input", None), dict) or hasattr(model, "backbone")

    def forward(x):
        inputs = {"token_ids": x, "padding_mask": tf.ones_like(x)} if hub else x
        return model(inputs, training=False)

    fn = tf.function(forward, reduce_retracing=True, autograph=False)
    return lambda ids: fn(tf.convert_to_tensor(np.asarray(ids, np.int32))).numpy()


def reference_logits(model, swapped: dict[str, np.ndarray] | None = None):
    """``ids (n,) -> logits (n, vocab)`` of the model a bundle of ``model`` is verified
    against: the Keras model's, or, with ``swapped`` (``{map: float (d_in, d_out) weights}``,
    the maps a budget bought int8 from `export_llm`'s ``float_model``), the model whose
    weights the file carries: ``model``'s decoder (`cached_forward`, the maths the bundle is
    traced from) with those maps' float weights in place of their int4 codes. Judged against
    the quantized Keras model, such a bundle would be charged for int4 error it removed.

    Example:
        >>> reference_logits(gptq_model, {"0.v": float_w})(np.array([5, 9, 2])).shape
        (3, 96)
    """
    if not swapped:
        keras = keras_logits(model)
        return lambda ids: keras(np.asarray(ids)[None])[0]
    import tensorflow as tf

    dec = decoder_of(model)
    dec.weights.update({f"{name}.w": [w] for name, w in swapped.items()})

    def forward(ids):
        n = len(ids)
        caches = [tf.zeros((1, dec.n_kv_heads, n, dec.head_dim))] * dec.n_layers
        logits, _, _ = cached_forward(dec, dec.weights, np.asarray(ids, np.int32)[None],
                                      np.arange(n, dtype=np.int32), caches, caches)
        return np.asarray(logits)[0]

    return forward


def _check_verify_text(text, tokenizer_json: str | None, vocab_size: int) -> None:
    """``verify_text``: a string needs the bundle's tokenizer; ids must be 2+ valid ids."""
    if text is None:
        return
    if isinstance(text, str):
        if not text.strip():
            raise TfcompressError("verify_text is an empty string; give text to verify on")
        if tokenizer_json is None:
            raise TfcompressError("verify_text is a string but no tokenizer was given to "
                                  "encode it: give tokenizer= or token ids")
        return
    ids = np.asarray(text)
    if (ids.ndim != 1 or ids.size < 2 or not np.issubdtype(ids.dtype, np.integer)
            or ids.min() < 0 or ids.max() >= vocab_size):
        raise TfcompressError(f"verify_text must be a string or 2+ token ids in "
                              f"[0, {vocab_size}), got {_short(text)}")


def _calibration_ids(ids, tokenizer_json: str | None, vocab_size: int) -> np.ndarray:
    """``calibration`` as ``(windows, n)`` token ids (checked), or its default: 4 windows of
    128 tokens of the bundled Austen train split (random ids without a tokenizer)."""
    if ids is None:
        if tokenizer_json is None:
            return np.random.default_rng(0).integers(0, vocab_size, (4, 128))
        from tfcompress.data import bundled_corpus
        from tfcompress.data.tokenizers import tokenizer_from_json

        text = bundled_corpus("austen")["train"][:20_000]
        return np.asarray(tokenizer_from_json(tokenizer_json).encode(text)[:512]).reshape(4, -1)
    arr = np.asarray(ids)
    if (arr.ndim not in (1, 2) or arr.shape[-1] < 2 or not np.issubdtype(arr.dtype, np.integer)
            or arr.min() < 0 or arr.max() >= vocab_size):
        raise TfcompressError(f"calibration must be token ids (windows, n) in "
                              f"[0, {vocab_size}), got {_short(ids)}")
    return arr.reshape(-1, arr.shape[-1])


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."


def verification_ids(runner, text, vocab_size: int, n: int) -> tuple[np.ndarray, str]:
    """``(up to n token ids, what they are)`` to verify a bundle on: ``text`` (a string,
    encoded by the bundle's tokenizer after its start token, or ids), else the opening of
    the bundled Austen test split, else (no tokenizer) random ids.

    Example:
        >>> verification_ids(runner, [5, 9, 2], 64, 128)
        (array([5, 9, 2]), 'the given 3 token ids')
    """
    if text is not None and not isinstance(text, str):
        ids = np.asarray(text)[:n]
        return ids, f"the given {ids.size} token ids"
    if runner.tokenizer is None:
        ids = np.random.default_rng(0).integers(0, vocab_size, min(n, 16))
        return ids, (f"{ids.size} random token ids (no tokenizer: give tokenizer= or "
                     "verify_text= to check on text)")
    if text is None:
        from tfcompress.data import bundled_corpus

        text, what = bundled_corpus("austen")["test"][:8 * n], "the bundled Austen test text"
    else:
        what = "the given text"
    ids = np.asarray(runner.encode(text)[:n])
    if ids.size < 2:
        raise TfcompressError(f"verify_text encodes to {ids.size} token; give text of 2+ "
                              "tokens")
    return ids, f"{ids.size} tokens of {what}"


def _perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
    """Perplexity of ``ids[1:]`` under the logits after each of ``ids[:-1]``."""
    from tfcompress.core.quality import token_stats

    nll, _, count = token_stats(logits[:-1], ids[1:])
    return float(np.exp(nll / count))


def _verify(reference, path: Path, dec: Decoder, mode, result: LLMExportResult, text) -> None:
    """The bundle's logits after each token of text vs ``reference``'s (`reference_logits`):
    logit error, next-token agreement and perplexity against the mode's tolerances; through the
    full-length signatures (what LiteRT-LM runs) and, in a bundle with buckets, through
    them too (what `LLMRunner` runs; its figures are the result's)."""
    from tfcompress.export.llm_runner import LLMRunner

    runners = [LLMRunner(path, buckets=False)]
    if runners[0].config.get("kv_cache_dtype") == "float16":  # keys/values rounded to 16 bits
        mode = max(mode, MODES["float16"], key=lambda m: m.max_rel_error)
    if runners[0].config["signatures"].get("buckets"):
        runners.append(LLMRunner(path))
    n = min(VERIFY_TOKENS, runners[0].cache_length)
    ids, result.verified_on = verification_ids(runners[0], text, dec.vocab_size, n)
    prefix = runners[0].config.get("sink_prefix", [])
    if prefix and ids[:len(prefix)].tolist() != prefix:  # the ids an integer bundle starts at
        ids = np.concatenate([prefix, ids])[:n]
    expected = reference(ids)
    for runner, signatures in zip(runners, ("full-length", "bucketed"), strict=False):
        got = runner.logits(ids)
        stats = agreement_stats(expected, got)
        if text is not None or runner.tokenizer is not None:  # random ids have no perplexity
            stats["perplexity"] = _perplexity(got, ids)
            stats["keras_perplexity"] = _perplexity(expected, ids)
        for key, value in stats.items():
            setattr(result, key, value)
        verify(result, Tolerances.of(mode), subject=(
            f"{result.mode} export of {dec.kind} (verified on {result.verified_on}"
            + (f", {signatures} signatures)" if len(runners) > 1 else ")")))
