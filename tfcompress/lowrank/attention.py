"""`FactorizedMultiHeadAttention`: a MultiHeadAttention whose projections are factorized.

`factorize` replaces the query/key/value/output EinsumDense layers inside a built
MultiHeadAttention and gives it this class, whose config lists the stand-ins, so a
``.keras`` file rebuilds them (the plain class would rebuild dense projections and fail to
load the factors).
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tfcompress")
class FactorizedMultiHeadAttention(keras.layers.MultiHeadAttention):
    """MultiHeadAttention with some projections replaced by factorized layers.

    ``factorized`` maps a projection attribute (e.g. ``"_query_dense"``) to
    ``{"layer": serialized layer, "input_dims": [...]}``.
    """

    def __init__(self, *args, factorized: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.factorized = dict(factorized or {})

    def record(self, name: str, layer) -> None:
        """Remember that projection ``name`` is now ``layer`` (already built)."""
        specs = dict(self.factorized)
        specs[name] = {"layer": keras.saving.serialize_keras_object(layer),
                       "input_dims": list(layer.input_dims)}
        self.factorized = specs

    def build(self, query_shape, value_shape, key_shape=None):
        from tfcompress.lowrank.factorize import _set_sublayer

        super().build(query_shape, value_shape, key_shape)
        for name, spec in self.factorized.items():
            new = keras.saving.deserialize_keras_object(spec["layer"])
            if not new.built:
                new.build((None, *spec["input_dims"]))
            _set_sublayer(self, name, None, getattr(self, name), new)

    def get_config(self):
        return {**super().get_config(), "factorized": dict(self.factorized)}
