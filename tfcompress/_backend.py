"""Select the TensorFlow backend before Keras is first imported."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ["KERAS_BACKEND"] != "tensorflow":
    raise ImportError(
        f"tfcompress needs KERAS_BACKEND=tensorflow, got {os.environ['KERAS_BACKEND']!r}"
    )
