"""README.md's benchmark tables, rendered from ``benchmarks/results/`` (never typed).

Each table sits between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in README.md;
`render` rewrites what is between them from the results file ``NAME`` (``index``: every
published result, from `benchmarks._published`), under a line saying which command, commit
and load made it, and marked stale when the manifest says so. Standard library only.

    python -m benchmarks._readme            # rewrite README.md's regions
    python -m benchmarks._readme --check    # exit 1 when README.md and the results disagree

Example:
    >>> text = render((ROOT / "README.md").read_text())
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks._provenance import ROOT, describe_load
from benchmarks._published import MANIFEST, RESULTS, Entry, load_manifest

REGION = re.compile(r"(<!-- results:(\w+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)


def _f(x, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def provenance_line(entry: Entry, meta: dict) -> str:
    """Which command, commit and load made a result; its stale reason first if it has one."""
    commit = f"commit {meta['commit'][:10]}" if meta.get("commit") else "commit not recorded"
    line = (f"From `{RESULTS}/{entry.name}.json`: `{meta.get('command')}`, {commit}, "
            f"{meta.get('date', 'undated')}; {describe_load(meta.get('load'))}.")
    return f"**Stale** ({entry.stale}). {line}" if entry.stale else line


def index_table(entries: dict[str, Entry], results: dict[str, dict]) -> str:
    """One row per published result: its command, commit, date and status."""
    lines = ["| result | command (`make bench B=NAME`) | commit | date | status |",
             "|---|---|---|---|---|"]
    for name, entry in entries.items():
        meta = results.get(name, {}).get("meta", {})
        lines.append(f"| `{name}` | `{entry.command}` | {(meta.get('commit') or '-')[:10]} | "
                     f"{meta.get('date', '-')} | {'stale' if entry.stale else 'current'} |")
    return "\n".join(lines)


def llm_table(data: dict, peer: bool = False) -> str:
    """SmolLM2 rows (ours, or the llm-compressor peer's ``peer_*``): perplexity, its ratio to
    the float model of the same code, stored size, seconds."""
    rows = {k: v for k, v in data["rows"].items() if k.startswith("peer_") == peer}
    base = rows.get("peer_float" if peer else "float", {}).get("ppl")
    lines = ["| method | perplexity | ratio to float | stored MB | seconds |",
             "|---|---|---|---|---|"]
    for name, row in rows.items():
        ratio = row["ppl"] / base if base else None
        lines.append(f"| {name} | {_f(row['ppl'], 2)} | {_f(ratio, 3)} | "
                     f"{_f(row.get('stored_mb'))} | {_f(data['seconds'].get(name), 0)} |")
    return "\n".join(lines) + f"\n\nPerplexity: {data['eval']}; calibration {data['calibration']}."


def peer_table(data: dict) -> str:
    """Ours beside llm-compressor, method by method (one run, fresh processes): perplexity
    ratio to each tool's own float model, seconds and peak RSS, ours over the peer's, and the
    other processes' CPU share while each ran; then the peer's rows."""
    lines = ["| method | ppl / float: ours, peer | seconds: ours, peer | peak RSS GB: ours, "
             "peer | ours / peer: ppl ratio, seconds, peak RSS | others' CPU: ours, peer |",
             "|---|---|---|---|---|---|"]
    rows, loads = data["rows"], data.get("load_by_method", {})
    for key, (ours, peer) in data.get("versus_peer", {}).items():
        a, b = rows.get(ours, {}), rows.get(peer, {})
        ratio = [r["ppl"] / rows[f]["ppl"] if "ppl" in r and f in rows else None
                 for r, f in ((a, "float"), (b, "peer_float"))]
        share = [loads.get(n, {}).get("others_cpu_share") for n in (ours, peer)]
        lines.append(
            f"| {ours} / {peer} | {_f(ratio[0], 3)}, {_f(ratio[1], 3)} | "
            f"{_f(data['seconds'].get(ours), 0)}, {_f(data['seconds'].get(peer), 0)} | "
            f"{_f(a.get('peak_rss_gb'), 2)}, {_f(b.get('peak_rss_gb'), 2)} | "
            f"{_f(data.get(f'ppl_vs_peer_{key}'), 3)}, "
            f"{_f(data.get(f'seconds_{key}_vs_peer'), 3)}, "
            f"{_f(data.get(f'peak_rss_vs_peer_{key}'), 2)} | "
            + ", ".join("-" if x is None else f"{x:.0%}" for x in share) + " |")
    return "\n".join(lines) + "\n\n" + llm_table(data, peer=True)


def generate_table(data: dict) -> str:
    """Our bundles and llama.cpp's files of the same GGUF: size, perplexity ratio to the float
    model on the same tokens, median tokens/s per thread count; then the ratios of ours to the
    llama.cpp file of matching precision."""
    timing = data.get("timing", {})
    lines = ["| runtime | file MB | ppl / float | ppl / own Keras | decode tok/s, 1 thread | "
             "prefill, 1 thread | decode, 2 threads | prefill, 2 threads |",
             "|---|---|---|---|---|---|---|---|"]
    for name, mb in data["file_mb"].items():
        t1, t2 = (timing.get(name, {}).get(t, {}) for t in ("1", "2"))
        lines.append(
            f"| {name if name.startswith('llama.cpp') else 'ours ' + name} | {_f(mb)} | "
            f"{_f(data.get('ppl_ratio_vs_float', {}).get(name), 3)} | "
            f"{_f(data.get('ppl_ratio_vs_keras', {}).get(name), 3)} | "
            f"{_f(t1.get('decode_tps'), 0)} | {_f(t1.get('prefill_tps'), 0)} | "
            f"{_f(t2.get('decode_tps'), 0)} | {_f(t2.get('prefill_tps'), 0)} |")
    engine, window = data.get("litertlm") or {}, data.get("window") or {}
    if "decode_tps" in engine:
        lines.append(f"| LiteRT-LM engine (our dynamic_int8) | - | - | - | - | - | "
                     f"{_f(engine['decode_tps'], 0)} | {_f(engine['prefill_tps'], 0)} |")
    if "decode_tps" in window:
        lines.append(f"| window path dynamic_int8 ({window['window']} tokens) | - | - | - | - | "
                     f"- | {_f(window['decode_tps'], 1)} | - |")
    made = data.get("llamacpp") or {}
    ratios = [f"llama-cpp-python {made['version']}: F16 made from {made['source']} (its type "
              f"{made['source_type']}), the others from that F16"] if made.get("source") else []
    rows = data.get("peer_rows") or {}
    if rows:
        ratios.append("keys from our rows " + ", ".join(f"{v} ({k})" for k, v in rows.items()))
    ratios += [f"`{k}` {data[k]:.3f}" for k in (
        "int8_mb_vs_q8_0", "int8_ppl_ratio", "q8_0_ppl_ratio", "int4_mb_vs_q4_k_m",
        "int4_ppl_ratio", "q4_k_m_ppl_ratio") if data.get(k) is not None]
    if data.get("rotation_max_rel_logit_diff") is not None:
        ratios.append(f"`rotation_max_rel_logit_diff` {data['rotation_max_rel_logit_diff']:.1e}")
    if data.get("decode_4096_vs_256") is not None:
        ratios.append(f"`decode_4096_vs_256` {data['decode_4096_vs_256']:.2f} (2 threads), "
                      f"{data['decode_4096_vs_256_1t']:.2f} (1 thread)")
    for key in ("decode_vs_llamacpp", "prefill_vs_llamacpp"):
        for pair, by in (data.get(key) or {}).items():
            ratios.append(f"`{key}` {pair}: " + ", ".join(
                f"{x:.2f} ({t} thread{'s' if t != '1' else ''})" for t, x in by.items()))
    loads = data.get("timing_load_avg")
    if loads:
        repeats = max((m["repeats"] for by in timing.values() for m in by.values()), default=0)
        ratios.append(f"tokens/s: the median of {repeats} interleaved run"
                      f"{'s' if repeats > 1 else ''} each, 1-minute load average "
                      f"{loads[0]:.1f}-{loads[1]:.1f} while timing")
    return "\n".join(lines) + ("\n\n" + "; ".join(ratios) + "." if ratios else "")


def int4_budget_table(data: dict) -> str:
    """SmolLM2 bundles with and without ``budget_mb``: size, perplexity, the int8 maps."""
    lines = ["| bundle | file MB | perplexity | ratio to float | maps kept int8 |",
             "|---|---|---|---|---|"]
    base = data["rows"].get("float", {}).get("ppl")
    for name, row in data["rows"].items():
        int8 = ("-" if "int8" not in row else f"{len(row['int8'])}: " + ", ".join(
            f"{n} {k}" for k, n in sorted(row["int8_by_kind"].items(), key=lambda x: -x[1])))
        lines.append(f"| {name} | {_f(row['mb'])} | {_f(row['ppl'], 2)} | "
                     f"{_f(row['ppl'] / base if base else None, 3)} | {int8} |")
    return "\n".join(lines) + f"\n\nPerplexity: {data['eval']}; budget's calibration " \
        f"{data['calibration']} of austen/train.txt."


def big_model_table(data: dict) -> str:
    """`lean_compress` over the 1.7B-shaped checkpoint: seconds per block and peak RSS."""
    lines = ["| method | blocks compressed | s / block | peak RSS GB | RSS after each block GB |",
             "|---|---|---|---|---|"]
    for name, row in data["methods"].items():
        after = ", ".join(f"{b['rss_gb']:.2f}" for b in row["per_block"])
        lines.append(f"| {name} | {row['blocks_compressed']} of "
                     f"{data['shape']['num_hidden_layers']} | {_f(row['seconds_per_block'])} | "
                     f"{_f(row['peak_rss_gb'], 2)} | {after} |")
    return "\n".join(lines) + (f"\n\nCheckpoint {data['checkpoint_gb']} GB ({data['dtype']}), "
                               f"{data['calibration_tokens']} calibration tokens; GPTQ's "
                               f"target: peak RSS <= {data['target_peak_rss_gb_gptq']} GB.")


def _pct(mean: float | None, spread: float | None = None, digits: int = 1) -> str:
    if mean is None:
        return "-"
    return f"{mean:+.{digits}%}" + ("" if spread is None else f" ± {spread:.{digits}%}")


def _mean_ppl(rows: dict, kind: str) -> str:
    values = [r[kind] for r in rows.get("seeds", {}).values() if kind in r]
    return f"{statistics.fmean(values):.3f}" if values else "-"


def distill_table(data: dict) -> str:
    """The library's distillation defaults against labels-only and Keras's Distiller per
    regime (the script's keys: mean ± spread over seeds), its other keys, the SmolLM2 curve."""
    lines = ["| regime | steps | seeds | teacher ppl | labels-only ppl | ours ppl | Keras ppl | "
             "ours vs labels | ours vs Keras |", "|---|---|---|---|---|---|---|---|---|"]
    spread = data.get("spread", {})
    for name, rows in data.get("regimes", {}).items():
        versus = [_pct(data.get(k, {}).get(name), spread.get(k, {}).get(name))
                  for k in ("default_kd_vs_labels", "default_vs_keras")]
        lines.append(f"| {name} | {rows.get('settings', {}).get('steps', '-')} | "
                     f"{len(rows.get('seeds', {}))} | {rows['teacher_ppl']:.3f} | "
                     + " | ".join(_mean_ppl(rows, k) for k in ("labels", "kd", "keras_kd"))
                     + f" | {' | '.join(versus)} |")
    d = data["defaults"]
    weight = d["labels_weight"]  # a number, or [start, end]: linear over the fit
    weight = " -> ".join(f"{w:g}" for w in weight) if isinstance(weight, list) else f"{weight:g}"
    text = (f"ours: `Distiller(teacher, student)` at its defaults (labels weight "
            f"{weight}, T {d['temperature']:g}, {d['divergence']}); Keras: "
            "`keras.distillation.Distiller` at its defaults (student loss weight 0.5, T 3); "
            f"`gap_closed_little_data` {_f(data.get('gap_closed_little_data'), 3)}, "
            f"`smollm2_half_depth_1000` {_f(data.get('smollm2_half_depth_1000'), 1)}.")
    curve = {b: v for b, v in (data.get("smollm2_curve") or {}).items() if b.isdigit()}
    if curve:
        blocks = data.get("smollm2_blocks") or {}
        if blocks:  # the text's length decides how many passes the longer runs make
            text += (f"\n\nSmolLM2-135M cut to its {len(blocks['keep'])} most important blocks, "
                     f"trained on the first {blocks['train_chars']:,} characters of the Austen "
                     "training text:")
        text += "\n\n" + "\n".join(
            ["| SmolLM2 half depth, steps | labels-only ppl | ours ppl |", "|---|---|---|",
             *(f"| {b} | {_f(v.get('labels'))} | {_f(v.get('kd'))} |" for b, v in curve.items())])
    return "\n".join(lines) + "\n\n" + text


def distill_sweep_table(data: dict) -> str:
    """Each swept setting's perplexity relative to labels-only per regime (mean over seeds),
    its worst regime against labels-only and against Keras's Distiller and the settings never
    worse than labels-only (the script's keys)."""
    regimes = data.get("regimes", {})
    versus = data.get("sweep_vs_labels", {})
    worst, worst_keras = data.get("sweep_worst_vs_labels", {}), data.get("sweep_worst_vs_keras", {})
    lines = ["| setting | " + " | ".join(regimes) + " | worst | worst vs Keras |",
             "|---|" + "---|" * (len(regimes) + 2),
             "| labels only (ppl) | " + " | ".join(_mean_ppl(rows, "labels")
                                                  for rows in regimes.values()) + " | | |"]
    for key in worst:
        cells = [_pct(versus.get(key, {}).get(name), digits=2) for name in regimes]
        lines.append(f"| {key} | {' | '.join(cells)} | {_pct(worst[key], digits=2)} | "
                     f"{_pct(worst_keras.get(key), digits=2)} |")
    safe = ", ".join(f"`{k}`" for k in data.get("sweep_never_worse", [])) or "none"
    return "\n".join(lines) + ("\n\n`wA_TB_div`: labels weight A (`0-1`: annealed from 0 to 1), "
                               "temperature B, divergence; `keras_kd`: Keras's Distiller at its "
                               "defaults. Never worse than labels-only in the regimes measured: "
                               f"{safe}.")


# README region -> (results file, table from its data)
TABLES: dict[str, tuple[str, Callable[[dict], str]]] = {
    "llm": ("llm", llm_table),
    "llm_peer": ("llm_peer", peer_table),
    "generate": ("generate", generate_table),
    "int4_budget": ("int4_budget", int4_budget_table),
    "big_model": ("big_model", big_model_table),
    "distill": ("distill", distill_table),
    "distill_sweep": ("distill_sweep", distill_sweep_table),
}


def render(readme: str, root: Path = ROOT) -> str:
    """``readme`` with every results region rewritten from ``root``'s results files."""
    entries = load_manifest(root)
    results = {name: json.loads(p.read_text()) for name in entries
               if (p := root / RESULTS / f"{name}.json").is_file()}

    def region(match: re.Match) -> str:
        key = match.group(2)
        if key == "index":
            body = index_table(entries, results)
        elif key in TABLES and TABLES[key][0] in results:
            name, table = TABLES[key]
            data = results[name]
            body = provenance_line(entries[name], data.get("meta", {})) + "\n\n" + table(data)
        else:
            raise ValueError(f"README.md: no results for region {key!r} (tables: "
                             f"{['index', *TABLES]}; files per {MANIFEST})")
        return f"{match.group(1)}{body}\n{match.group(4)}"

    return REGION.sub(region, readme)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    path = ROOT / "README.md"
    text = path.read_text()
    rendered = render(text)
    if "--check" in argv:
        if rendered != text:
            sys.exit("README.md's result tables differ from benchmarks/results/: run "
                     "`python -m benchmarks._readme`")
        print("README.md matches benchmarks/results/")
        return
    path.write_text(rendered)
    print(f"rendered {len(REGION.findall(text))} result tables into README.md")


if __name__ == "__main__":
    main()
