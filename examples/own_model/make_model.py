"""A user's own language model, written the way a Keras user would, trained briefly.

Plain functional Keras 3: a token embedding, two pre-norm blocks (causal multi-head
attention, a two-layer MLP, residual additions), a final norm and a dense head, with Keras's
automatic layer names. Its tokenizer is `tokenizer.json` beside this script (a Hugging Face
byte-level BPE trained on a slice of the bundled Austen text, see `train_tokenizer`).

    python examples/own_model/make_model.py            # -> runs/own_model/my_lm.keras
    python examples/own_model/make_model.py OUT --steps 20

The model and a copy of the tokenizer go to the output folder (default ``runs/own_model``),
where ``examples/own_model/recipe.yaml`` reads them.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_lm(vocab: int, width: int = 32, heads: int = 2, blocks: int = 2):
    """The user's model: ids (batch, seq) -> logits (batch, seq, vocab)."""
    import keras
    from keras import layers

    ids = keras.Input((None,), dtype="int32")
    x = layers.Embedding(vocab, width)(ids)
    for _ in range(blocks):
        h = layers.LayerNormalization()(x)
        x = x + layers.MultiHeadAttention(heads, width // heads)(h, h, use_causal_mask=True)
        h = layers.LayerNormalization()(x)
        x = x + layers.Dense(width)(layers.Dense(4 * width, activation="gelu")(h))
    logits = layers.Dense(vocab)(layers.LayerNormalization()(x))
    return keras.Model(ids, logits, name="my_lm")


def train_tokenizer(path: Path, vocab: int = 320, chars: int = 200_000) -> None:
    """How `tokenizer.json` was made: byte-level BPE on the start of Austen's training text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tfcompress.data import bundled_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([bundled_corpus("austen")["train"][:chars]], trainer=trainer)
    tok.save(str(path))


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="runs/own_model", help="output folder")
    parser.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    args = parser.parse_args(argv)
    import keras

    from tfcompress.data import BPETokenizer, load_corpus
    from tfcompress.models.training import train_lm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "tokenizer.json", out / "tokenizer.json")
    tokenizer = BPETokenizer.from_json((out / "tokenizer.json").read_text(encoding="utf-8"))
    corpus = load_corpus("austen", tokenizer=tokenizer)
    keras.utils.set_random_seed(0)
    model = build_lm(corpus.vocab_size)
    train_lm(model, corpus.dataset("train", 64, 16, repeat=True), args.steps)
    model.save(out / "my_lm.keras")
    print(f"wrote {out / 'my_lm.keras'} and {out / 'tokenizer.json'}")
    return out / "my_lm.keras"


if __name__ == "__main__":
    main()
