"""Find the layers of any Keras 3 model (nested ones included), copy models.

Which layer classes the methods touch is a registry keyed by class (`register_layer`): each
entry names the attribute holding the weight, the built-in type whose maths the class shares
(``like``: its kernel is laid out as that type's) and the methods allowed on it. Keras's
Dense, EinsumDense, Embedding and Conv1D-3D are registered; a class of your own joins with
one call. Lookup is by exact class, so a subclass (``TiedEmbedding``) is its own type. The
classes a method puts in place of float layers (quantized, QAT, low rank) are recorded apart
(`register_compressed`), so a model holding one is known as compressed (`is_compressed`).

Example:
    >>> for path, layer in select_layers(model, types=("Dense", "EinsumDense")):
    ...     print(path, kernel_of(layer).shape)
    block0_attn/query (16, 2, 8)
    ...
    lm_head (16, 256)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from tfcompress.errors import TfcompressError

COMPRESSIBLE_TYPES = ("Dense", "EinsumDense", "Embedding", "Conv1D", "Conv2D", "Conv3D")
METHODS = ("prune", "quantize", "qat", "factorize")


@dataclass(frozen=True)
class LayerSpec:
    """How the methods see a registered layer class: ``weight`` is the attribute holding its
    main weight, ``like`` the built-in type whose kernel layout it shares, ``methods`` the
    methods that may touch it."""

    weight: str
    like: str
    methods: tuple[str, ...] = METHODS


_LAYERS: dict[type, LayerSpec] = {}
_KERAS_REGISTERED = False  # Keras's own classes join on first lookup (keras loads lazily here)
_ON_REGISTER: list[Callable[[type], object]] = []
_COMPRESSED: set[type] = set()  # classes a method puts in place of float layers


def register_layer(cls: type, weight: str = "kernel", like: str = "Dense",
                   methods: Sequence[str] = METHODS) -> type:
    """Let tfcompress's methods touch layers of class ``cls`` (exactly that class).

    ``weight`` names the attribute holding the weight (a variable, or a property over one);
    ``like`` is the built-in type its weight is laid out as (``"Dense"``: ``(d_in, d_out)``),
    so ``types=("Dense",)`` selects it too; ``methods`` the methods allowed (of `METHODS`).
    Returns ``cls`` (usable as a decorator through ``functools.partial``).

    Example:
        >>> register_layer(MyDense, weight="w", methods=("prune", "quantize"))
    """
    if not isinstance(cls, type):
        raise TfcompressError(f"register_layer takes a layer class, got {cls!r}")
    if like not in COMPRESSIBLE_TYPES:
        raise TfcompressError(f"like must be one of {list(COMPRESSIBLE_TYPES)}, got {like!r}")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise TfcompressError(f"methods must be among {list(METHODS)}, got {bad}")
    _LAYERS[cls] = LayerSpec(weight, like, tuple(methods))
    for hook in _ON_REGISTER:
        hook(cls)
    return cls


def on_register(hook: Callable[[type], object]) -> None:
    """Call ``hook(cls)`` for every registered layer class, now and as classes join (a method
    makes its compressed class of each, so files naming them load)."""
    if not _KERAS_REGISTERED:
        _register_keras_layers()
    _ON_REGISTER.append(hook)
    for cls in list(_LAYERS):
        hook(cls)


def register_compressed(cls: type) -> type:
    """Record ``cls`` as a layer class a method puts in place of a float layer (quantized
    codes, QAT, low-rank factors); its subclasses count too. Returns ``cls`` (a decorator).

    Example:
        >>> @register_compressed
        ... class HalfDense(keras.layers.Dense):
        ...     "a Dense layer stored at half width (a stand-in)"
        >>> is_compressed(HalfDense(2)), is_compressed(keras.layers.Dense(2))
        (True, False)
    """
    if not isinstance(cls, type):
        raise TfcompressError(f"register_compressed takes a layer class, got {cls!r}")
    _COMPRESSED.add(cls)
    return cls


def is_compressed(layer) -> bool:
    """Whether ``layer`` is of a class `register_compressed` recorded (or a subclass).

    Example:
        >>> is_compressed(LowRankDense(rank=2, output_dims=(4,)))
        True
    """
    return isinstance(layer, tuple(_COMPRESSED))


def weight_attribute(cls: type) -> str:
    """The attribute of registered class ``cls`` that holds the weight variable: ``_kernel``
    behind Keras's ``kernel`` property, else the registered ``weight`` itself."""
    weight = class_spec(cls).weight
    return f"_{weight}" if isinstance(getattr(cls, weight, None), property) else weight


def layer_spec(layer) -> LayerSpec | None:
    """The registry's entry for ``layer``'s exact class (None when not registered)."""
    return class_spec(type(layer))


def class_spec(cls: type) -> LayerSpec | None:
    """The registry's entry for layer class ``cls`` (None when not registered); a compressed
    class (`tfcompress.core.replace.compressed_class`) has its float class's."""
    if not _KERAS_REGISTERED:
        _register_keras_layers()
    plain = getattr(cls, "float_class", None)
    return _LAYERS.get(cls) if plain is None else class_spec(plain)


def layer_type(layer) -> str:
    """The type name selection matches: ``like`` of a registered class, else the class name."""
    spec = layer_spec(layer)
    return spec.like if spec is not None else type(layer).__name__


def _register_keras_layers() -> None:
    global _KERAS_REGISTERED
    import keras

    for name in COMPRESSIBLE_TYPES:
        _LAYERS.setdefault(getattr(keras.layers, name), LayerSpec(
            "embeddings" if name == "Embedding" else "kernel", name))
    _KERAS_REGISTERED = True


def is_keras3_model(obj) -> bool:
    import keras

    return isinstance(obj, keras.Model)


def is_tf_keras_model(obj) -> bool:
    return any(
        c.__module__.startswith(("tf_keras", "keras.src.engine", "tensorflow.python.keras"))
        and c.__name__ in ("Model", "Functional", "Sequential")
        for c in type(obj).__mro__
    )


def is_keras_model(obj) -> bool:
    """A Keras 3 or a tf.keras (Keras 2) model."""
    return is_keras3_model(obj) or is_tf_keras_model(obj)


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


def iter_layers(model) -> Iterator[tuple[str, object]]:
    """Every layer below ``model``, depth first, nested layers included, each once.

    A layer's path is the chain of layer names from ``model`` (excluded) down to it, e.g.
    ``block0_attn/query`` or ``gpt2_backbone/transformer_layer_0/self_attention/query``.
    Names are part of a model's config, so paths agree between a model, its `copy_model`
    and its reloaded ``.keras`` file, however the model was built (Keras's own
    ``layer.path`` depends on the name scope the layer happened to be built in).
    """
    seen: set[int] = set()

    def walk(parent, prefix: str):
        for layer in parent._flatten_layers(include_self=False, recursive=False):
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            path = f"{prefix}{layer.name}"
            yield path, layer
            yield from walk(layer, path + "/")

    yield from walk(model, "")


def layer_paths(model) -> dict[int, str]:
    """``{id(layer): path}`` for every layer below ``model`` (see `iter_layers`)."""
    return {id(layer): path for path, layer in iter_layers(model)}


def kernel_of(layer):
    """The main weight of a layer (its registered ``weight``, else kernel or embeddings), or
    None."""
    spec = layer_spec(layer)
    for attr in (spec.weight,) if spec is not None else ("kernel", "embeddings"):
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
    method: str | None = None,
) -> list[tuple[str, object]]:
    """Layers with a kernel chosen by type (``types``: `layer_type` names), by path and by
    ``method`` (a registered class is chosen only by the methods it allows).

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
        if types is not None and layer_type(layer) not in types:
            continue
        spec = layer_spec(layer)
        if method is not None and spec is not None and method not in spec.methods:
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
    """An independent, uncompiled copy with the same weights and layer paths.

    Plain functional and Sequential models are cloned; others are rebuilt from their config
    (so a KerasHub ``GPT2CausalLM`` stays a ``GPT2CausalLM``, a subclassed model its class,
    where ``clone_model`` would flatten the first into a plain functional model and miss the
    weights of tied layers); then every layer's own variables are
    copied across as Keras saves them. Layers named automatically (``dense_3``) get their
    original names back, so `iter_layers` paths match. The copy carries no optimizer or
    compile state: its ``.keras`` file holds weights only. Raises when the model cannot be
    rebuilt from its config (pass ``inplace=True`` to the method instead).

    Example:
        >>> clone = copy_model(model)       # clone.weights equal model.weights, not shared
    """
    import keras
    from keras.src.models.functional import Functional

    try:
        if type(model) in (Functional, keras.Sequential):
            clone = clone_graph(model)
        else:  # a live object's own config: safe to rebuild (Lambda layers included)
            config = keras.saving.serialize_keras_object(model)
            config.pop("compile_config", None)  # the copy starts without optimizer state
            clone = keras.saving.deserialize_keras_object(config, safe_mode=False)
        build = model.get_build_config()
        if not clone.built and build:
            clone.build_from_config(build)
        transfer_state(model, clone)
        drop_training_state(clone)
    except TfcompressError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to rebuild means "cannot copy"
        raise TfcompressError(
            f"cannot copy model {model.name!r} ({type(model).__name__}): it cannot be rebuilt "
            f"from get_config() ({type(err).__name__}: {err}); register it with "
            "@keras.saving.register_keras_serializable and give it get_config, or pass "
            "inplace=True to modify it in place"
        ) from err
    return clone


def clone_graph(model, clone_function=None):
    """``keras.models.clone_model`` of a functional/Sequential ``model``, uncompiled (Keras
    would compile the clone as ``model``, deserializing its loss: a lambda would fail)."""
    import keras

    compiled, model.compiled = model.compiled, False
    try:
        return keras.models.clone_model(model, clone_function=clone_function)
    finally:
        model.compiled = compiled


def drop_training_state(model):
    """Forget ``model``'s optimizer and compile state, in place: the slots belong to weights
    a method is about to change, and would otherwise be saved with the model."""
    model.optimizer = None
    model.compiled = False
    return model


def transfer_state(source, target) -> None:
    """Copy every layer's own variables (as Keras saves them) and name from ``source`` to
    the structurally identical ``target``, in place."""
    pairs = [(source, target)]
    a, b = list(iter_layers(source)), list(iter_layers(target))
    if [type(la) for _, la in a] != [type(la) for _, la in b]:
        raise TfcompressError(
            f"the rebuilt {type(source).__name__} does not have the layers of {source.name!r}"
        )
    pairs += [(la, lb) for (_, la), (_, lb) in zip(a, b, strict=True)]
    for src, dst in pairs:
        if dst is not target and dst.name != src.name:
            dst.name = src.name  # automatic names are renumbered on rebuild
        store: dict = {}
        src.save_own_variables(store)
        if store:
            dst.load_own_variables(store)


def kernel_axes(layer) -> tuple[tuple[int, ...], int]:
    """``(order, n_in)``: the kernel's axes with the ``n_in`` axes contracted with the input
    first. Dense, Embedding and most EinsumDense kernels already lead with them (order is
    the identity); Gemma's ``btd,ndh->btnh`` query kernel contracts its middle axis.
    Conv kernels contract all but the last axis.
    """
    kernel = kernel_of(layer)
    ndim = len(kernel.shape)
    if layer_type(layer).startswith("Conv"):
        return tuple(range(ndim)), ndim - 1
    equation = getattr(layer, "equation", None)
    if not equation:
        return tuple(range(ndim)), 1
    inputs, output = equation.replace(" ", "").split("->")
    x_sub, k_sub = inputs.split(",")
    contracted = [i for i, c in enumerate(k_sub) if c in set(x_sub) - set(output)]
    if not contracted:
        return tuple(range(ndim)), 1
    return (*contracted, *(i for i in range(ndim) if i not in contracted)), len(contracted)


def input_axes(layer) -> int:
    """How many kernel axes are contracted with the layer's input (see `kernel_axes`).

    1 for Dense, Embedding and most EinsumDense layers; 2 for an attention output projection
    (``abcd,cde->abe``: heads and head size).
    """
    return kernel_axes(layer)[1]


def to_matrix(kernel, axes: tuple, xp=np):
    """``kernel`` (a layer's kernel or an array of its shape) as a ``(d_in, d_out)`` matrix,
    input axes on rows; ``axes`` is the layer's `kernel_axes`, ``xp`` numpy or keras.ops.

    Example:
        >>> to_matrix(np.zeros((2, 16, 8)), ((1, 0, 2), 1)).shape     # Gemma's query
        (16, 16)
    """
    order, n_in = axes
    shape = tuple(kernel.shape)
    d_in = int(np.prod([shape[i] for i in order[:n_in]]))
    return xp.reshape(xp.transpose(kernel, order), (d_in, int(np.prod(shape)) // d_in))


def from_matrix(matrix, axes: tuple, shape: tuple, xp=np):
    """Inverse of `to_matrix`: a ``(d_in, d_out)`` matrix back in kernel ``shape``."""
    order, _ = axes
    permuted = xp.reshape(matrix, tuple(int(shape[i]) for i in order))
    return xp.transpose(permuted, tuple(int(i) for i in np.argsort(order)))


def matrix_shape(layer) -> tuple[int, int]:
    """``(d_in, d_out)`` of the layer's kernel seen as a matrix, without reading its values."""
    shape = tuple(kernel_of(layer).shape)
    order, n_in = kernel_axes(layer)
    d_in = int(np.prod([shape[i] for i in order[:n_in]]))
    return d_in, int(np.prod(shape)) // d_in


def kernel_matrix(layer) -> np.ndarray:
    """The kernel as a ``(d_in, d_out)`` float matrix (inputs on rows)."""
    return to_matrix(np.asarray(kernel_of(layer).numpy()), kernel_axes(layer))


def set_kernel_matrix(layer, matrix: np.ndarray) -> None:
    """Write a ``(d_in, d_out)`` matrix back into the layer's kernel, in its stored layout."""
    kernel = kernel_of(layer)
    kernel.assign(from_matrix(np.asarray(matrix, dtype=kernel.dtype), kernel_axes(layer),
                              kernel.shape))


def copy_kept_blocks(source, student, keep: Sequence[int]) -> None:
    """Assign ``student``'s weights from ``source``'s by variable path, student block ``j``
    (layers ``block{j}_*``) from source block ``keep[j]``: a shallower copy's initialisation."""
    weights = {v.path: v for v in source.weights}
    for v in student.weights:
        path = v.path
        if path.startswith("block"):
            block, rest = path[len("block"):].split("_", 1)
            path = f"block{keep[int(block)]}_{rest}"
        v.assign(weights[path])
