"""The residual-stream search of ``benchmarks.diagnose_llm``, on arrays with known answers."""

import numpy as np

from benchmarks.diagnose_llm import largest_activation


def test_largest_activation_finds_the_sink_and_what_int8_leaves():
    h = np.full((2, 3, 4), 0.5)
    h[0, 0, 2] = -254.0  # the sink: sample 0, token 0, channel 2
    h[1, 0, 2] = 100.0   # sample 1's largest value sits at token 0 too
    h[1, 2, 3] = 1.5
    found = largest_activation(h)
    assert (found["value"], found["channel"], found["position"]) == (-254.0, 2, 0)
    assert found["median_abs"] == 0.5 and found["times_median"] == 508.0
    assert found["step"] == 2.0  # 254 / 127
    assert found["zeroed"] == 21 / 24  # every 0.5 rounds to 0; -254, 100 and 1.5 survive
    assert found["same_position"] == 1.0
    h[1, 1, 0] = 200.0  # sample 1's largest moves to token 1
    assert largest_activation(h)["same_position"] == 0.5
    assert largest_activation(h, bits=16)["zeroed"] == 0.0  # 16 bits: step 254/32767
