"""tfcompress: compress Keras language models (distil, prune, quantize, factorize, export)."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "tensorflow-cpu==2.21.0",
    "keras==3.15.1",
    "tf-keras==2.21.0",
    "tensorflow-model-optimization==0.8.1",
    "tensorly==0.10.0",
    "tensorflow-datasets==4.9.10",
    "ai-edge-litert==2.3.0",
    "ai-edge-quantizer==0.10.0",
    "matplotlib==3.11.2",
    "numpy==2.4.6",
    "tokenizers==0.23.3",
    "tqdm==4.70.1",
    "pyyaml==6.0.4",
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",
        "nbmake==1.5.5",
        "ipykernel==7.4.0",
        "keras-hub==0.32.0",
        "ruff==0.17.6",
        "gguf==0.19.0",
        "safetensors==0.8.0",
    ],
    "llm": [
        "gguf==0.19.0",
        "safetensors==0.8.0",
    ],
    # .litertlm files (write_litertlm) and LiteRT-LM's own engine to run them
    "litertlm": [
        "litert-lm-builder==0.18.1",
        "litert-lm-api==0.18.1",
    ],
}

setup(
    name="tfcompress",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["tfcompress", "tfcompress.*"]),
    package_data={"tfcompress.data": ["corpora/*/*.gz", "corpora/*/*.md"],
                  "tfcompress.recipes": ["examples/*.yaml"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["tfcompress=tfcompress.cli:main"]},
)
