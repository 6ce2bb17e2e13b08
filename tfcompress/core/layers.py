"""Find the layers of any Keras 3 model (nested ones included), copy models, capture inputs.

Example:
    >>> for path, layer in select_layers(model, types=("Dense", "EinsumDense")):
    ...     print(path, kernel_of(layer).shape)
    >>> inputs = capture_inputs(model, [layer], calibration_ids)   # {path: (n, d_in) array}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from tfcompress.errors import TfcompressError

COMPRESSIBLE_TYPES = ("Dense", "EinsumDense", "Embedding", "Conv1D", "Conv2D", "Conv3D")


def is_keras3_model(obj) -> bool:
    import keras

    return isinstance(obj, keras.Model)


def is_tf_keras_model(obj) -> bool:
    return any(
        c.__module__.startswith(("tf_keras", "keras.src.engine", "tensorflow.python.keras"))
        and c.__name__ in ("Model", "Functional", "Sequential")
        for c in type(obj).__mro__
    )


def require_keras3(model, arg: str = "model", legacy_hint: str = "") -> None:
    """Raise unless ``model`` is a Keras 3 model; ``legacy_hint`` names the tf.keras path."""
    if is_keras3_model(model):
        return
    if is_tf_keras_model(model):
        raise TfcompressError(
            f"{arg} is a tf.keras (Keras 2) model; this path takes Keras 3 models"
            + (f": use {legacy_hint} for tf.keras models" if legacy_hint else "")
        )
    raise TfcompressError(f"{arg} must be a Keras 3 keras.Model, got {type(model).__name__}")


def require_tf_keras(model, arg: str = "model", native_hint: str = "") -> None:
    """Raise unless ``model`` is a tf.keras model; ``native_hint`` names the Keras 3 path."""
    if is_tf_keras_model(model):
        return
    if is_keras3_model(model):
        raise TfcompressError(
            f"{arg} is a Keras 3 model; this TF-MOT path takes tf.keras (Keras 2) models"
            + (f": use {native_hint} for Keras 3 models" if native_hint else "")
        )
    raise TfcompressError(f"{arg} must be a tf_keras.Model, got {type(model).__name__}")


def layer_path(layer) -> str:
    """A readable, nested path such as ``block0_attn/query`` (the name when Keras has none)."""
    return getattr(layer, "path", None) or layer.name


def iter_layers(model) -> Iterator[tuple[str, object]]:
    """Every layer below ``model``, depth first, nested layers included, each once."""
    seen = set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if id(layer) not in seen:
            seen.add(id(layer))
            yield layer_path(layer), layer


def kernel_of(layer):
    """The main weight matrix of a layer (kernel, or embeddings), or None."""
    for attr in ("kernel", "embeddings"):
        if hasattr(layer, attr) and not getattr(layer, "_layers", None):
            try:
                return getattr(layer, attr)
            except (AttributeError, ValueError):
                return None
    return None


def select_layers(
    model,
    types: Sequence[str] | None = COMPRESSIBLE_TYPES,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    require: bool = True,
) -> list[tuple[str, object]]:
    """Layers with a kernel chosen by class name (``types``) and by path.

    ``include`` / ``exclude`` are a regex (searched in the path) or a list of exact paths or
    names. With ``require`` an empty selection raises, naming what was available.
    """

    def matcher(spec):
        if spec is None:
            return None
        if isinstance(spec, str):
            pattern = re.compile(spec)
            return lambda path, layer: bool(pattern.search(path))
        names = set(spec)
        return lambda path, layer: path in names or layer.name in names

    inc, exc = matcher(include), matcher(exclude)
    chosen = []
    candidates = [(p, la) for p, la in iter_layers(model) if kernel_of(la) is not None]
    for path, layer in candidates:
        if types is not None and type(layer).__name__ not in types:
            continue
        if inc is not None and not inc(path, layer):
            continue
        if exc is not None and exc(path, layer):
            continue
        chosen.append((path, layer))
    if require and not chosen:
        available = ", ".join(f"{p} ({type(la).__name__})" for p, la in candidates[:12])
        raise TfcompressError(
            f"no layer matched types={list(types) if types else None}, include={include!r}, "
            f"exclude={exclude!r}; layers with kernels: {available or 'none'}"
        )
    return chosen


def copy_model(model):
    """An independent copy with the same weights, so a method never changes the user's model.

    Functional and Sequential models are cloned; subclassed ones are rebuilt from their
    config. Raises when neither works (pass ``inplace=True`` to the method instead).
    """
    import keras

    try:
        clone = keras.models.clone_model(model)
    except Exception:  # noqa: BLE001 - subclassed models without clone support
        try:
            clone = model.__class__.from_config(model.get_config())
        except Exception as err:
            raise TfcompressError(
                f"cannot copy model {model.name!r} ({type(model).__name__}): it cannot be cloned "
                "or rebuilt from get_config(); pass inplace=True to modify it in place"
            ) from err
    if not clone.built and model.get_build_config():
        clone.build_from_config(model.get_build_config())
    clone.set_weights(model.get_weights())
    return clone


def capture_inputs(model, layers: Sequence, data, max_rows: int | None = None) -> dict:
    """Record the first input of each of ``layers`` while ``model`` runs eagerly on ``data``.

    ``data`` is what `calibration_batches` takes (arrays, dicts for models with named inputs
    such as KerasHub backbones, or iterables of them). Keeps every row: methods reduce
    inputs as they stream with `tfcompress.core.calibrate` instead. Returns
    ``{layer_path: array (rows, d_in)}``, rows in the order of `kernel_matrix`'s rows.
    """
    from tfcompress.core.calibration import calibration_batches  # it imports this module

    batches = calibration_batches(data, model)
    store: dict[str, list[np.ndarray]] = {layer_path(la): [] for la in layers}
    for layer in layers:
        path, original = layer_path(layer), layer.call
        width = matrix_shape(layer)[0] if kernel_of(layer) is not None else -1

        def recording(*args, _path=path, _call=original, _width=width, **kwargs):
            store[_path].append(np.asarray(args[0]).reshape(-1, _width))
            return _call(*args, **kwargs)

        layer.call = recording
    try:
        for batch in batches:
            model(batch if isinstance(batch, dict) else np.asarray(batch), training=False)
    finally:
        for layer in layers:
            del layer.call
    out = {p: np.concatenate(v) for p, v in store.items() if v}
    missing = [p for p in store if p not in out]
    if missing:
        raise TfcompressError(f"layers {missing} were never called on the calibration data")
    return {p: v[:max_rows] if max_rows else v for p, v in out.items()}


def input_axes(layer) -> int:
    """How many leading kernel axes are contracted with the layer's input.

    1 for Dense, Embedding and most EinsumDense layers; 2 for an attention output projection
    (``abcd,cde->abe``: heads and head size). Conv kernels contract all but the last axis.
    """
    name = type(layer).__name__
    kernel = kernel_of(layer)
    if name.startswith("Conv"):
        return len(kernel.shape) - 1
    equation = getattr(layer, "equation", None)
    if not equation:
        return 1
    inputs, output = equation.replace(" ", "").split("->")
    x_sub, k_sub = inputs.split(",")
    contracted = set(x_sub) & set(k_sub) - set(output)
    n = 0
    while n < len(k_sub) and k_sub[n] in contracted:
        n += 1
    return max(n, 1)


def matrix_shape(layer) -> tuple[int, int]:
    """``(d_in, d_out)`` of the layer's kernel seen as a matrix, without reading its values."""
    shape = tuple(kernel_of(layer).shape)
    n_in = input_axes(layer)
    return int(np.prod(shape[:n_in])), int(np.prod(shape[n_in:]))


def kernel_matrix(layer) -> np.ndarray:
    """The kernel as a ``(d_in, d_out)`` float matrix (inputs on rows)."""
    kernel = np.asarray(kernel_of(layer).numpy())
    n_in = input_axes(layer)
    return kernel.reshape(int(np.prod(kernel.shape[:n_in])), -1)


def set_kernel_matrix(layer, matrix: np.ndarray) -> None:
    """Write a ``(d_in, d_out)`` matrix back into the layer's kernel, reshaped as stored."""
    kernel = kernel_of(layer)
    kernel.assign(np.asarray(matrix, dtype=kernel.dtype).reshape(kernel.shape))
