"""share_quantization: signatures reading one int8 weight share its scales in the file."""

import numpy as np
import pytest
import tensorflow as tf

from tfcompress.export.shared_quant import share_quantization

IN, OUT = 64, 48  # >= 1,024 weights: the dynamic-range converter quantizes the matrix


@pytest.fixture(scope="module")
def two_signatures():
    """A dynamic-range flatbuffer with two signatures that read one (IN, OUT) matrix."""
    w = tf.constant(np.random.default_rng(0).normal(size=(IN, OUT)).astype(np.float32))

    class Two(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, IN], tf.float32)])
        def one(self, x):
            return {"y": tf.matmul(x, w)}

        @tf.function(input_signature=[tf.TensorSpec([4, IN], tf.float32)])
        def four(self, x):
            return {"y": tf.nn.relu(tf.matmul(x, w))}

    module = Two()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.one.get_concrete_function(), module.four.get_concrete_function()], module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def per_channel_tables(flatbuffer):
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model_from_bytearray(flatbuffer)
    return [t.quantization for g in model.subgraphs for t in g.tensors
            if t.quantization is not None and t.quantization.scale is not None
            and len(t.quantization.scale) > 1]


def run(flatbuffer, signature, x):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=flatbuffer).get_signature_runner(signature)(x=x)["y"]


def test_the_second_signature_reads_the_first_ones_scales(two_signatures):
    tables = per_channel_tables(two_signatures)
    assert [len(t.scale) for t in tables] == [OUT, OUT]  # one per signature, per channel
    shared, count = share_quantization(two_signatures)
    assert count == 1
    # against the same model packed without sharing, what goes is one float32 scale and one
    # int64 zero point per channel, plus the table's own few words (vtable, vector lengths)
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    unshared = fbu.convert_object_to_bytearray(fbu.read_model_from_bytearray(two_signatures))
    assert OUT * (4 + 8) <= len(unshared) - len(shared) <= OUT * (4 + 8) + 64
    again = per_channel_tables(shared)  # read back, both tensors carry the same values
    assert all(np.array_equal(a.scale, b.scale) for a, b in zip(tables, again, strict=True))
    x = np.random.default_rng(1).normal(size=(4, IN)).astype(np.float32)
    for signature, rows in (("one", x[:1]), ("four", x)):
        np.testing.assert_array_equal(run(shared, signature, rows),
                                      run(two_signatures, signature, rows))


def test_nothing_to_share_returns_the_same_bytes():
    w = tf.constant(np.ones((IN, OUT), np.float32))

    class One(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, IN], tf.float32)])
        def one(self, x):
            return {"y": tf.matmul(x, w)}

    module = One()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.one.get_concrete_function()], module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    flatbuffer = converter.convert()
    assert share_quantization(flatbuffer) == (flatbuffer, 0)


@pytest.mark.parametrize("mode", ["dynamic_int8", "int4"])
def test_export_llm_leaves_no_table_to_share(tmp_path, mode):
    """export_llm shares the tables in its own rewrite (share_tied_table's, quantize_int4's),
    so another pass finds none; the tied table and the head's scales are stored once."""
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    from tests.test_export_llm import tiny_int4_llama
    from tfcompress.export.llm import export_llm

    export_llm(tiny_int4_llama(None, vocab=96), tmp_path, prefill_lengths=(8,),
               cache_length=32, cache_buckets=(16,), mode=mode, verify_output=False,
               verbose=False)
    flatbuffer = (tmp_path / "model.tflite").read_bytes()
    model = fbu.read_model_from_bytearray(flatbuffer)
    assert len(model.subgraphs) == 4  # prefill, decode and the bucket's pair
    unshared = len(fbu.convert_object_to_bytearray(model))  # every tensor its own table
    # nothing left to share (a re-pack may align a few bytes apart) ...
    assert abs(len(share_quantization(flatbuffer)[0]) - len(flatbuffer)) <= 16
    # ... and at least the head's per-row table (96 float32 scales, int64 zero points) is
    # stored once, not once per signature
    assert unshared - len(flatbuffer) >= 3 * 96 * (4 + 8)
