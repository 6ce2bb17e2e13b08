"""Where a quantized ``.tflite`` file loses accuracy: tensor by tensor, in graph order.

`diagnose` converts the Keras model to a float32 ``.tflite`` (which matches Keras to ~1e-6),
runs it and the quantized file on the same samples with every intermediate tensor kept, and
for each quantized tensor reports its scale, the range that scale can represent, the range the
float values really take, the share of values clipped, and the error the tensor carries
relative to the float tensor's spread, both in total and as added by this op (its error minus
the largest error among its inputs). The first rows with a large added error name the op that
breaks quantization (a masked attention score holding -1e9 next to O(1) values, for example).

Example:
    >>> report = diagnose(model, "teacher_int8.tflite", windows[:8])
    >>> print(report.to_markdown(10))     # the 10 worst tensors
    >>> report.plot("int8_errors.png")
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfcompress.errors import TfcompressError
from tfcompress.export.converter import convert, input_spec
from tfcompress.export.representative import representative_samples


@dataclass(frozen=True)
class TensorError:
    """One quantized tensor of the file, compared with the same tensor of the float model."""

    order: int
    op: str
    tensor: str
    dtype: str
    scale: float
    zero_point: int
    representable: tuple[float, float]
    observed: tuple[float, float]
    clipped: float
    relative_error: float
    added_error: float

    @property
    def layer(self) -> str:
        """The layer path the tensor belongs to (its name without the op's own part)."""
        return self.tensor.split(";")[0].rsplit("/", 1)[0]

    def describe(self) -> str:
        """One line: op, layer, errors, scale and ranges (for error messages)."""
        return (f"{self.op} in `{self.layer}` (op #{self.order}) adds error "
                f"{self.added_error:.3g} of the float tensor's spread (total "
                f"{self.relative_error:.3g}); scale {self.scale:.3g} over observed "
                f"[{self.observed[0]:.3g}, {self.observed[1]:.3g}], {self.clipped:.1%} clipped")

    @property
    def resolution(self) -> float:
        """The scale as a share of the float tensor's observed range (1/255 at best for int8)."""
        span = self.observed[1] - self.observed[0]
        return self.scale / span if span > 0 else 0.0


@dataclass
class Diagnosis:
    """Per-tensor errors in graph order plus the end-to-end logit agreement."""

    rows: list[TensorError] = field(default_factory=list)
    agreement: float | None = None

    def worst(self, n: int = 10) -> list[TensorError]:
        """The ``n`` tensors whose op added the most error."""
        return sorted(self.rows, key=lambda r: -r.added_error)[:n]

    def first_broken(self, threshold: float = 0.1) -> TensorError | None:
        """The earliest tensor (graph order) whose op adds more than ``threshold`` error."""
        return next((r for r in self.rows if r.added_error > threshold), None)

    def to_dict(self) -> dict:
        return {"agreement": self.agreement, "rows": [asdict(r) for r in self.rows]}

    def to_markdown(self, n: int | None = None) -> str:
        rows = self.rows if n is None else sorted(self.worst(n), key=lambda r: r.order)
        lines = ["| # | op | tensor | dtype | scale | representable | observed | clipped "
                 "| error | added |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r.order} | {r.op} | `{r.tensor[-48:]}` | {r.dtype} | {r.scale:.3g} | "
                f"[{r.representable[0]:.3g}, {r.representable[1]:.3g}] | "
                f"[{r.observed[0]:.3g}, {r.observed[1]:.3g}] | {r.clipped:.1%} | "
                f"{r.relative_error:.3g} | {r.added_error:.3g} |")
        return "\n".join(lines)

    def plot(self, path: str | Path | None = None, title: str = "quantization error by tensor"):
        """Relative error of each tensor in graph order (log scale) as a matplotlib ``Figure``;
        saved as a PNG when ``path``."""
        from tfcompress.core.figures import DPI, figure

        fig = figure(9, 3.5)
        ax = fig.add_subplot()
        xs = [r.order for r in self.rows]
        ax.semilogy(xs, [max(r.relative_error, 1e-6) for r in self.rows], ".-", lw=0.8,
                    label="error")
        ax.semilogy(xs, [max(r.added_error, 1e-6) for r in self.rows], "x", ms=4,
                    label="added by the op")
        for r in self.worst(3):
            ax.annotate(r.op, (r.order, max(r.added_error, 1e-6)), fontsize=8,
                        xytext=(3, 3), textcoords="offset points")
        ax.legend(fontsize=8)
        ax.set(xlabel="op (graph order)", ylabel="error / float std", title=title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=DPI)
        return fig


def tensor_error(reference: np.ndarray, quantized: np.ndarray, scale: float, zero_point: int,
                 dtype) -> dict:
    """Range, clipping and relative RMS error of a dequantized tensor against its float twin.

    ``quantized`` holds the raw integer values; the error is divided by the float tensor's
    standard deviation (by its RMS when it is constant), so 1.0 means "no information left".
    """
    ref = np.asarray(reference, np.float64)
    got = (np.asarray(quantized, np.float64) - zero_point) * scale
    info = np.iinfo(dtype)
    low, high = (info.min - zero_point) * scale, (info.max - zero_point) * scale
    spread = ref.std() or np.sqrt((ref ** 2).mean()) or 1.0
    return {
        "representable": (float(low), float(high)),
        "observed": (float(ref.min()), float(ref.max())),
        "clipped": float(((ref < low - scale / 2) | (ref > high + scale / 2)).mean()),
        "relative_error": float(np.sqrt(((got - ref) ** 2).mean()) / spread),
    }


def _all_tensors(content: bytes, samples: list[np.ndarray]):
    """Run ``content`` on each sample keeping every op's output; yield (interpreter, tensors).

    Weights and other constants are left out: an LLM's would be copied once per sample."""
    from tfcompress.export.runner import TFLiteRunner

    runner = TFLiteRunner(content, preserve_all_tensors=True)
    interpreter = runner.interpreter
    produced = sorted({int(t) for n in interpreter._get_ops_details() for t in n["outputs"]})
    for x in samples:
        runner.predict(x)
        values = {}
        for index in produced:
            try:
                values[index] = interpreter.get_tensor(index)
            except ValueError:  # tensors the runtime never materialized
                continue
        yield interpreter, values


def reference_tflite(model, seq_len: int | None = None) -> bytes:
    """The float32 flatbuffer `diagnose` compares against (reusable across several files)."""
    # traced like the quantized modes, so tensors (and their names) correspond
    return convert(model, input_spec(model, seq_len), "float32", bounded_masks=True)[0]


def diagnose(model, tflite_path: str | Path, samples, seq_len: int | None = None,
             reference: bytes | None = None) -> Diagnosis:
    """Compare every quantized tensor of ``tflite_path`` with the float model's on ``samples``.

    ``samples`` are model inputs ``(n, seq_len)`` (a handful of real text windows is enough).
    Tensors are matched by name; those the float graph lacks (requantize steps) are skipped.
    ``reference`` is `reference_tflite` of the same model, when already made.
    """
    path = Path(tflite_path)
    if not path.is_file() or path.stat().st_size == 0:
        raise TfcompressError(f"tflite_path {str(path)!r} is not a .tflite file")
    spec = input_spec(model, seq_len)
    rows_in = representative_samples(samples, spec, max_samples=16)
    reference = reference or reference_tflite(model, seq_len)
    content = path.read_bytes()

    sums: dict[str, list] = {}
    float_runs = list(_all_tensors(reference, rows_in))
    float_names = {d["name"]: d["index"] for d in float_runs[0][0].get_tensor_details()}
    quant_logits, float_logits = [], []
    for (q_int, q_vals), (f_int, f_vals) in zip(
            _all_tensors(content, rows_in), float_runs, strict=True):
        out = q_int.get_output_details()[0]
        raw = q_vals[out["index"]].astype(np.float64)
        scale, zero = out["quantization"]
        quant_logits.append((raw - zero) * scale if out["dtype"] != np.float32 and scale else raw)
        float_logits.append(f_vals[f_int.get_output_details()[0]["index"]])
        tensors = {d["index"]: d for d in q_int.get_tensor_details()}
        ops = q_int._get_ops_details()  # the public API has no list
        # a tensor dequantized for the output keeps its float name on the DEQUANTIZE's output
        float_name = {int(n["inputs"][0]): tensors[int(n["outputs"][0])]["name"]
                      for n in ops if n["op_name"] == "DEQUANTIZE"}
        for order, node in enumerate(ops):
            for t in node["outputs"]:
                d = tensors.get(int(t))
                if d is None or d["dtype"] not in (np.int8, np.int16) or t not in q_vals:
                    continue
                scale, zero = d["quantization"]
                name = d["name"] if d["name"] in float_names else float_name.get(int(t))
                if not scale or name not in float_names:
                    continue
                ref = f_vals.get(float_names[name])
                # a QAT model's float file holds integer tensors under the same names
                if (ref is None or ref.shape != q_vals[t].shape
                        or not np.issubdtype(ref.dtype, np.floating)):
                    continue
                inputs = [tensors[int(i)]["name"] for i in node["inputs"] if int(i) in tensors]
                sums.setdefault(d["name"], [order, node["op_name"], d, inputs, []])[4].append(
                    (ref, q_vals[t]))
    rows, errors = [], {}
    for name, (order, op, d, inputs, pairs) in sorted(sums.items(), key=lambda kv: kv[1][0]):
        scale, zero = d["quantization"]
        ref = np.concatenate([p[0].ravel() for p in pairs])
        got = np.concatenate([p[1].ravel() for p in pairs])
        stats = tensor_error(ref, got, float(scale), int(zero), d["dtype"])
        errors[name] = stats["relative_error"]
        upstream = max((errors.get(i, 0.0) for i in inputs), default=0.0)
        rows.append(TensorError(order, op, name, np.dtype(d["dtype"]).name, float(scale),
                                int(zero), **stats,
                                added_error=max(stats["relative_error"] - upstream, 0.0)))
    q, f = np.concatenate(quant_logits), np.concatenate(float_logits)
    return Diagnosis(rows, float((q.argmax(-1) == f.argmax(-1)).mean()))
