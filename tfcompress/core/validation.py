"""Input checks shared by every verb and loader, run before any work.

Each raises `TfcompressError` naming the argument, what came in and what is valid; none
changes what it checks. Token ids are integer arrays of rank 2 ``(batch, seq_len)`` with
values in ``[0, vocab)``; sequence lengths fit the model's positions; models already
quantized (or in QAT) are refused by verbs that need float weights; output paths are checked
writable before a conversion; files are checked to exist and be non-empty before a library
reads them, and the library's own errors are re-raised with the file's name.

Example:
    >>> check_token_ids(np.array([[1, 2, 99]]), "calibration", vocab=64)
    Traceback (most recent call last):
    tfcompress.errors.TfcompressError: calibration holds token id 99, but the model's ...
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tfcompress.core.layers import is_keras3_model, iter_layers, require_keras3
from tfcompress.errors import TfcompressError

# what a model carrying each kind of state can still go through
NEXT_STEPS = {
    "quantize": "it can be saved, evaluated (tfcompress.evaluate) or exported "
                "(export_tflite); prune, factorize and qat need the float model, so apply them "
                "before quantize",
    "keras": "it can be saved and evaluated; export and tfcompress's methods need the float "
             "model, so apply them before model.quantize / method='keras_*'",
    "qat": "call tfcompress.quantize.strip_qat(model) first, then quantize it with the same "
           "config (or keep training it)",
}
APPLIED = {"quantize": "quantized by tfcompress.quantize", "qat": "a QAT model (tfcompress.qat)",
           "keras": "quantized by Keras (model.quantize or method='keras_*')"}


def compression_state(model) -> dict:
    """``{kind: payload}`` of the compression ``model`` carries (empty for a plain model)."""
    return dict(getattr(model, "tfc_state", None) or {})


def check_model(model, verb: str, arg: str = "model", legacy_hint: str = "") -> None:
    """A Keras 3 model with float weights that ``verb`` may compress (not already quantized
    or in QAT); says what was applied and what can follow."""
    require_keras3(model, arg, legacy_hint)
    held = {getattr(la, "compression", None) for _, la in iter_layers(model)}
    kinds = [k for k in ("quantize", "qat") if k in held]
    keras_q = [p for p, la in iter_layers(model) if getattr(la, "quantization_mode", None)]
    if keras_q:
        kinds.append("keras")
    if kinds:
        kind = kinds[0]
        detail = f" (layers {', '.join(keras_q[:3])})" if kind == "keras" else ""
        raise TfcompressError(
            f"{arg} {model.name!r} is already {APPLIED[kind]}{detail}, so {verb} cannot "
            f"apply: {NEXT_STEPS[kind]}"
        )


def model_vocab(model) -> int | None:
    """The token vocabulary of a model fed token ids: its token embedding's rows (None when
    its input is not token ids)."""
    import keras

    embeddings = [la for _, la in iter_layers(model) if isinstance(la, keras.layers.Embedding)]
    tokens = [la for la in embeddings if "position" not in la.name]
    if tokens:
        return int(tokens[0].input_dim)
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) == 1 and "int" in str(inputs[0].dtype):
        return int(model.outputs[0].shape[-1])
    return None


def model_positions(model) -> int | None:
    """The longest sequence the model takes: its fixed input length or its learned position
    table's rows (None when unbounded, e.g. RoPE)."""
    limits = []
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) == 1 and len(inputs[0].shape) >= 2 and inputs[0].shape[1] is not None:
        limits.append(int(inputs[0].shape[1]))
    for _, layer in iter_layers(model):
        if "PositionEmbedding" in type(layer).__name__:
            size = getattr(layer, "max_length", None) or getattr(layer, "sequence_length", None)
            if size:
                limits.append(int(size))
    return min(limits) if limits else None


def check_seq_len(model, seq_len, arg: str = "seq_len") -> None:
    """``seq_len`` (None allowed) is a positive integer the model's positions can hold."""
    if seq_len is None:
        return
    if isinstance(seq_len, bool) or not isinstance(seq_len, int | np.integer) or seq_len < 1:
        raise TfcompressError(f"{arg} must be a positive integer, got {seq_len!r}")
    limit = model_positions(model) if is_keras3_model(model) else None
    if limit is not None and seq_len > limit:
        raise TfcompressError(
            f"{arg}={seq_len} is longer than model {model.name!r} takes ({limit} positions); "
            f"use {arg} <= {limit}"
        )


def check_token_ids(ids, arg: str, vocab: int | None = None, max_len: int | None = None,
                    rank: int = 2) -> np.ndarray:
    """``ids`` as an integer array of ``rank`` (default ``(batch, seq_len)``) with values in
    ``[0, vocab)`` and at most ``max_len`` per row; returns it (not copied when already an
    array)."""
    if hasattr(ids, "numpy") and not isinstance(ids, np.ndarray):
        ids = ids.numpy()
    try:
        array = np.asarray(ids)
    except ValueError as err:  # ragged nested lists
        raise TfcompressError(f"{arg} must be a rectangular array of token ids: {err}") from err
    if array.dtype == object or not (np.issubdtype(array.dtype, np.integer)
                                     or np.issubdtype(array.dtype, np.floating)):
        raise TfcompressError(
            f"{arg} must hold integer token ids, got dtype {array.dtype} "
            f"({type(ids).__name__})"
        )
    if np.issubdtype(array.dtype, np.floating):
        raise TfcompressError(
            f"{arg} must hold integer token ids, got dtype {array.dtype}; floats are not cast "
            "silently: convert with .astype('int32') if they really are ids"
        )
    if array.ndim != rank:
        hint = f" (one sequence? use {arg}[None])" if array.ndim == rank - 1 else ""
        raise TfcompressError(
            f"{arg} must be token ids of shape (batch, seq_len), got shape {array.shape}{hint}"
            if rank == 2 else f"{arg} must have rank {rank}, got shape {array.shape}"
        )
    if array.size == 0:
        raise TfcompressError(f"{arg} is empty (shape {array.shape}): give at least one token")
    low, high = int(array.min()), int(array.max())
    if low < 0 or (vocab is not None and high >= vocab):
        bad = low if low < 0 else high
        raise TfcompressError(
            f"{arg} holds token id {bad}, but the model's vocabulary is {vocab}: ids must be "
            f"in [0, {vocab})"
        )
    if max_len is not None and rank == 2 and array.shape[1] > max_len:
        raise TfcompressError(
            f"{arg} rows have {array.shape[1]} tokens, longer than the model takes ({max_len} "
            "positions)"
        )
    return array


def check_calibration(model, data, arg: str = "calibration") -> list:
    """Model-input batches from an array or an iterable of arrays, dicts or ``(inputs, ...)``
    tuples (read once: generators are consumed here), each checked as token ids when the
    model takes token ids. Returns the list of batches."""
    if data is None:
        raise TfcompressError(f"{arg} is required: give token-id windows (batch, seq_len)")
    if isinstance(data, str | bytes | Path):
        raise TfcompressError(f"{arg} must be token ids or batches of them, got a "
                              f"{type(data).__name__} {str(data)[:40]!r}")
    items = [data] if isinstance(data, np.ndarray | dict) or hasattr(data, "numpy") else None
    if items is None:
        try:
            items = list(data)
        except TypeError as err:
            raise TfcompressError(f"{arg} must be token ids or an iterable of batches, got "
                                  f"{type(data).__name__}") from err
    batches = [b[0] if isinstance(b, tuple | list) and not _is_id_row(b) else b for b in items]
    if isinstance(data, list) and batches and all(_is_id_row(b) for b in batches):
        batches = [data]  # a nested list of ids is one batch
    if not batches:
        raise TfcompressError(f"{arg} is empty: give at least one batch of token ids")
    vocab, positions = model_vocab(model), model_positions(model)
    takes_ids = vocab is not None
    for i, batch in enumerate(batches):
        name = arg if len(batches) == 1 else f"{arg}[{i}]"
        if isinstance(batch, dict):
            if "token_ids" in batch:
                check_token_ids(batch["token_ids"], f"{name}['token_ids']", vocab, positions)
            continue
        if takes_ids:
            check_token_ids(batch, name, vocab, positions)
        elif np.size(batch) == 0:
            raise TfcompressError(f"{name} is empty (shape {np.shape(batch)})")
    return batches


def check_fit_data(model, x, y=None) -> None:
    """Training data for a token-id ``model`` checked before ``fit`` traces anything: arrays
    completely (integer ids in ``[0, vocab)``, rows within the positions), a ``tf.data``
    dataset by its element types (it is not read here)."""
    vocab = model_vocab(model)
    if vocab is None:
        return
    positions = model_positions(model)
    if isinstance(x, np.ndarray | list):
        check_token_ids(x, "x", vocab, positions)
        if isinstance(y, np.ndarray | list):
            check_token_ids(y, "y", vocab, positions)
        return
    spec = getattr(x, "element_spec", None)
    parts = spec if isinstance(spec, tuple) else (spec,)
    for name, part in zip(("x", "y"), parts[:2], strict=False):
        dtype = getattr(part, "dtype", None)
        if dtype is not None and not dtype.is_integer:
            raise TfcompressError(
                f"{name} in the dataset must be integer token ids, got dtype {dtype.name}; "
                "floats are not cast silently: map them with tf.cast(..., 'int32')")


def _is_id_row(b) -> bool:
    return isinstance(b, list | tuple) and bool(b) and all(isinstance(v, int | np.integer)
                                                            for v in b)


def check_output_path(path, arg: str = "path", suffix: str | None = None,
                      folder: bool = False) -> Path:
    """``path`` can be written: not a folder (not a file when ``folder``), and its nearest
    existing folder is writable."""
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise TfcompressError(f"{arg} must be a file path, got {path!r}")
    out = Path(path)
    if suffix and out.suffix != suffix:
        raise TfcompressError(f"{arg} must end in {suffix}, got {str(path)!r}")
    if out.is_dir() and not folder:
        raise TfcompressError(f"{arg} {str(path)!r} is a folder; give a file path")
    if out.is_file() and folder:
        raise TfcompressError(f"{arg} {str(path)!r} is a file; give a folder path")
    parent = out.absolute().parent
    while not parent.exists():  # missing folders are made by the writer
        parent = parent.parent
    if not parent.is_dir():
        raise TfcompressError(f"{arg} {str(path)!r} is under {str(parent)!r}, which is a file")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise TfcompressError(f"{arg} {str(path)!r} is not writable")
    return out


def check_input_file(path, arg: str = "path", suffix: str | None = None,
                     folder: bool = False) -> Path:
    """``path`` exists, is a (non-empty) file, or a folder when ``folder``."""
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise TfcompressError(f"{arg} must be a path, got {path!r}")
    p = Path(path)
    if not p.exists():
        raise TfcompressError(f"{arg} {str(path)!r} does not exist")
    if folder:
        if not p.is_dir():
            raise TfcompressError(f"{arg} {str(path)!r} must be a folder")
        return p
    if not p.is_file():
        raise TfcompressError(f"{arg} {str(path)!r} is not a file")
    if suffix and p.suffix != suffix:
        raise TfcompressError(f"{arg} must end in {suffix}, got {str(path)!r}")
    if p.stat().st_size == 0:
        raise TfcompressError(f"{arg} {str(path)!r} is empty (0 bytes)")
    return p


@contextlib.contextmanager
def reading(path, what: str) -> Iterator[None]:
    """Re-raise a library's error while reading ``path`` as `TfcompressError` with the file's
    name and ``what`` it should be."""
    try:
        yield
    except TfcompressError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader error means an unreadable file
        detail = first_line(str(err))
        raise TfcompressError(
            f"cannot read {str(path)!r} as {what}: {type(err).__name__}"
            f"{': ' + detail if detail else ''}"
        ) from err


def first_line(text: str, limit: int = 200) -> str:
    """The first line of an error's text, cut at a word boundary with an ellipsis."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0] + " …"


def check_keras_archive(path, arg: str = "model") -> None:
    """A ``.keras`` file is a complete zip archive holding ``config.json`` and the weights,
    else an error saying which of these is wrong (Keras itself answers "File not found")."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise TfcompressError(
            f"{arg} {str(path)!r} is not a .keras archive: not a zip file (truncated while "
            "copying, or another format renamed?); save it again with model.save(...)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise TfcompressError(f"{arg} {str(path)!r} is a damaged zip archive ({err}); save it "
                              "again with model.save(...)") from err
    if broken is not None:
        raise TfcompressError(f"{arg} {str(path)!r} is damaged: {broken} fails its checksum; "
                              "save it again with model.save(...)")
    missing = [n for n in ("config.json", "model.weights.h5") if n not in names]
    if missing:
        raise TfcompressError(f"{arg} {str(path)!r} is a zip file but not a Keras model: it "
                              f"lacks {', '.join(missing)} (it holds {sorted(names)[:6]})")


def unknown_classes(config) -> list[str]:
    """``module.Class`` of every object in a saved Keras config that is not Keras's, KerasHub's
    or tfcompress's own: the user's code that must be imported before loading."""
    found = []
    if isinstance(config, dict):
        module = config.get("module") or ""
        if "class_name" in config and module and not module.startswith(
                ("keras", "tfcompress", "builtins")):
            found.append(f"{module}.{config['class_name']}")
        for value in config.values():
            found += unknown_classes(value)
    elif isinstance(config, list):
        for value in config:
            found += unknown_classes(value)
    return sorted(set(found))
