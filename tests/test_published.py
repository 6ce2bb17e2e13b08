"""Published benchmark results: the manifest checker (each kind of problem on a tmp copy of
``benchmarks/``), the README tables rendered from the results, the load measurement, and
merging only results of the same commit."""

import json
import shutil
from types import SimpleNamespace

import pytest

from benchmarks import _published, _readme
from benchmarks._common import merge_source
from benchmarks._provenance import ROOT, others_cpu_share, script_sha256
from tfcompress.errors import TfcompressError

COMMIT = "a" * 40


@pytest.fixture
def repo(tmp_path):
    """A copy of the manifest, the scripts and the results, plus a current result ``toy``."""
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    for path in (ROOT / "benchmarks").glob("*.py"):
        shutil.copy(path, tmp_path / "benchmarks" / path.name)
    for path in (ROOT / "benchmarks" / "results").glob("*.*"):
        shutil.copy(path, tmp_path / "benchmarks" / "results" / path.name)
    (tmp_path / "benchmarks" / "toy.py").write_text("print('toy')\n")
    with open(tmp_path / "benchmarks" / "published.toml", "w") as f:
        f.write((ROOT / "benchmarks" / "published.toml").read_text())
        f.write('\n[toy]\ncommand = "python -m benchmarks.toy --n 2"\n')
    write_toy(tmp_path)
    return tmp_path


def write_toy(root, **meta):
    meta = {"command": "python -m benchmarks.toy --n 2", "commit": COMMIT, "dirty": [],
            "script_sha256": script_sha256("toy", root), "merged": []} | meta
    (root / "benchmarks" / "results" / "toy.json").write_text(json.dumps({"x": 1, "meta": meta}))


def problems(root):
    found, _ = _published.check(root)
    return found


def test_the_repository_passes_and_reports_its_stale_results():
    found, stale = _published.check()
    assert found == []
    entries = _published.load_manifest()
    assert len(stale) == sum(bool(e.stale) for e in entries.values())
    assert all(": " in line and "is stale" in line for line in stale)


def test_a_current_copy_passes(repo):
    assert problems(repo) == []


def test_command_not_in_manifest(repo):
    write_toy(repo, command="python -m benchmarks.toy --n 3")
    assert problems(repo) == ["benchmarks/results/toy.json: made by 'python -m benchmarks.toy "
                              "--n 3', not its manifest command 'python -m benchmarks.toy --n 2'"]


def test_results_file_without_manifest_entry(repo):
    (repo / "benchmarks" / "results" / "llm_part1.json").write_text("{}")
    assert problems(repo) == ["benchmarks/results/llm_part1.json: no entry in "
                              "benchmarks/published.toml makes it: add its command there, or "
                              "delete it"]


def test_path_outside_the_repository(repo):
    manifest = repo / "benchmarks" / "published.toml"
    command = "python -m benchmarks.toy --n 2 --merge /tmp/x.json"
    manifest.write_text(manifest.read_text().replace("python -m benchmarks.toy --n 2", command))
    write_toy(repo, command=command)
    assert problems(repo) == [
        "benchmarks/published.toml [toy]: its command names '/tmp/x.json', outside the "
        "repository",
        "benchmarks/results/toy.json: its command names '/tmp/x.json', outside the repository"]
    assert _published.outside_paths("python -m b --out=../../x --gguf runs/a.gguf", repo) == [
        "../../x"]


def test_older_script_needs_a_rerun(repo):
    (repo / "benchmarks" / "toy.py").write_text("print('toy, changed')\n")
    assert problems(repo) == ["benchmarks/results/toy.json: made by another version of "
                              "benchmarks/toy.py than the one in the tree: re-run its command"]


def test_no_commit_uncommitted_changes_and_foreign_merges(repo):
    write_toy(repo, commit=None, dirty=["tfcompress/prune/wanda.py"], merged=[
        {"file": "toy_a.json", "command": "python -m benchmarks.toy --part a", "commit": None}])
    assert problems(repo) == [
        "benchmarks/results/toy.json: no commit recorded",
        "benchmarks/results/toy.json: made with uncommitted changes to "
        "['tfcompress/prune/wanda.py']",
        "benchmarks/results/toy.json: merges toy_a.json made by 'python -m benchmarks.toy "
        "--part a' on None, not a manifest command on the same commit"]


def test_stale_entry_is_reported_not_failed(repo):
    manifest = repo / "benchmarks" / "published.toml"
    manifest.write_text(manifest.read_text() + 'stale = "the GPU is gone"\n')
    (repo / "benchmarks" / "toy.py").write_text("print('toy, changed')\n")
    found, stale = _published.check(repo)
    assert found == [] and stale[-1] == "benchmarks/results/toy.json is stale: the GPU is gone"


def test_malformed_manifest_entry(repo):
    (repo / "benchmarks" / "published.toml").write_text('[x]\ncommand = "python -m nope"\n')
    with pytest.raises(ValueError, match=r"\[x\]: needs command = \"python -m benchmarks.X"):
        _published.load_manifest(repo)


def test_readme_tables_match_the_results():
    readme = (ROOT / "README.md").read_text()
    assert "<!-- results:llm -->" in readme and _readme.render(readme) == readme


def test_readme_renders_figures_and_marks_stale(repo):
    readme = (ROOT / "README.md").read_text()
    path = repo / "benchmarks" / "results" / "llm_peer.json"
    data = json.loads(path.read_text())
    data["rows"]["peer_sparsegpt_50"]["ppl"] = data["rows"]["peer_float"]["ppl"] * 2
    path.write_text(json.dumps(data))
    manifest = repo / "benchmarks" / "published.toml"
    text = manifest.read_text()
    if "stale = " not in text.split("[llm_peer]")[1].split("\n[")[0]:  # marked stale here
        line = '--name llm_peer"\n'
        manifest.write_text(text.replace(line, line + 'stale = "a test"\n', 1))
    rendered = _readme.render(readme, repo)
    assert rendered != readme and "| peer_sparsegpt_50 | " in rendered
    region = rendered[rendered.index("<!-- results:llm_peer -->"):]
    region = region.split("<!-- /results:llm_peer -->")[0]
    assert region.split("\n")[1].startswith("**Stale** (")
    assert "| 2.000 |" in region  # the peer's row, to its own float model
    assert "| sparsegpt_50 / peer_sparsegpt_50 | " in region and ", 2.000 | " in region
    with pytest.raises(ValueError, match="no results for region 'nope'"):
        _readme.render("<!-- results:nope -->\n<!-- /results:nope -->", repo)



def test_distill_tables_show_the_scripts_keys_beside_the_seeds_means():
    regimes = {"little": {"teacher_ppl": 6.0, "settings": {"steps": 400}, "seeds": {
        "0": {"labels": 10.0, "kd": 9.0, "keras_kd": 9.0, "w0_T1_forward_kl": 8.0},
        "1": {"labels": 12.0, "kd": 12.0, "keras_kd": 10.0, "w0_T1_forward_kl": 12.6}}},
        "kerashub": {"teacher_ppl": 12.0, "seeds": {"0": {"labels": 12.5, "kd": 12.5}}}}
    table = _readme.distill_table({
        "regimes": regimes, "default_kd_vs_labels": {"little": -0.05, "kerashub": 0.0},
        "default_vs_keras": {"little": 0.1, "kerashub": None},
        "spread": {"default_kd_vs_labels": {"little": 0.0707, "kerashub": None}},
        "gap_closed_little_data": 0.2, "smollm2_curve": {"1000": {"kd": 79.0}},
        "smollm2_blocks": {"keep": [0, 3, 5], "train_chars": 2200000},
        "defaults": {"labels_weight": 0.7, "temperature": 1.0, "divergence": "forward_kl"}})
    assert ("| little | 400 | 2 | 6.000 | 11.000 | 10.500 | 9.500 | -5.0% ± 7.1% | "
            "+10.0% |") in table  # ppl: the seeds' means; the rest: the script's keys
    assert "| kerashub | - | 1 | 12.000 | 12.500 | 12.500 | - | +0.0% | - |" in table
    assert "labels weight 0.7, T 1, forward_kl" in table and "| 1000 | - | 79.0 |" in table
    assert "cut to its 3 most important blocks, trained on the first 2,200,000 " in table
    annealed = _readme.distill_table({"regimes": {}, "defaults": {
        "labels_weight": [0.3, 1.0], "temperature": 1.0, "divergence": "forward_kl"}})
    assert "at its defaults (labels weight 0.3 -> 1, T 1, forward_kl)" in annealed
    sweep = _readme.distill_sweep_table({
        "regimes": regimes, "sweep_never_worse": [],
        "sweep_worst_vs_labels": {"w0_T1_forward_kl": 0.1, "keras_kd": -0.133},
        "sweep_worst_vs_keras": {"w0_T1_forward_kl": 0.26},
        "sweep_vs_labels": {"w0_T1_forward_kl": {"little": -0.075, "kerashub": None},
                            "keras_kd": {"little": -0.1333}}})
    # each regime's cell is the script's key, shown as a percentage; None or absent: "-"
    assert "| w0_T1_forward_kl | -7.50% | - | +10.00% | +26.00% |" in sweep
    assert "| keras_kd | -13.33% | - | -13.30% | - |" in sweep
    assert "labels-only in the regimes measured: none." in sweep


def test_others_cpu_share():
    # 2 cores for 10 s = 20 CPU-seconds; 14 busy of which 4 ours: others took 10 = half
    assert others_cpu_share(busy_s=14.0, own_s=4.0, wall_s=10.0, cores=2) == 0.5
    assert others_cpu_share(busy_s=3.0, own_s=4.0, wall_s=10.0, cores=2) == 0.0  # tick noise
    assert others_cpu_share(busy_s=90.0, own_s=0.0, wall_s=10.0, cores=2) == 1.0
    assert others_cpu_share(busy_s=1.0, own_s=0.0, wall_s=0.0, cores=2) == 0.0


def test_merge_only_results_of_this_commit(tmp_path, monkeypatch):
    from benchmarks import _common

    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    args = SimpleNamespace(quick=False, merged=[], provenance={"commit": COMMIT})
    for name, commit in (("old.json", "b" * 40), ("new.json", COMMIT)):
        (tmp_path / name).write_text(json.dumps({"rows": {"a": 1}, "meta": {
            "command": f"python -m benchmarks.llm --name {name[:3]}", "commit": commit}}))
    with pytest.raises(TfcompressError, match="not a results file in "):
        merge_source(tmp_path.parent / "llm.json", args)
    with pytest.raises(TfcompressError, match="old.json was made on commit 'bbbb.*, this run "
                       "is on 'aaaa.*re-run its command .'python -m benchmarks.llm --name old'"):
        merge_source(tmp_path / "old.json", args)
    assert args.merged == []
    assert merge_source(tmp_path / "new.json", args) == {"rows": {"a": 1}}
    assert args.merged == [{"file": "new.json", "command": "python -m benchmarks.llm --name new",
                            "commit": COMMIT}]


def test_resume_only_a_cut_short_run_of_this_command_commit_and_script(tmp_path, monkeypatch):
    from benchmarks import _common

    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    command, sha = "python -m benchmarks.distill", "c" * 64
    first = {"file": "distill.json", "command": command, "commit": COMMIT, "load": {"cores": 2},
             "resumed": True}

    def args(dirty=()):
        return SimpleNamespace(quick=False, merged=[], command=command, provenance={
            "commit": COMMIT, "dirty": list(dirty), "script_sha256": sha})

    def save(**meta):
        meta = {"command": command, "commit": COMMIT, "script_sha256": sha, "complete": False,
                "load": {"cores": 2}, "merged": [first]} | meta
        (tmp_path / "distill.json").write_text(json.dumps({"rows": {"a": 1}, "meta": meta}))

    assert _common.resume_source("distill", args()) == {}  # nothing saved yet
    for changed in ({"complete": True}, {"commit": "b" * 40}, {"script_sha256": "d" * 64},
                    {"command": command + " --seeds 1"}):
        save(**changed)
        assert _common.resume_source("distill", args()) == {}, changed
    save()
    assert _common.resume_source("distill", args(dirty=["tfcompress/x.py"])) == {}
    resumed = args()
    assert _common.resume_source("distill", resumed) == {"rows": {"a": 1}}
    assert resumed.merged == [first, {**first, "load": {"cores": 2}}]


def test_a_run_cut_short_needs_its_command_again(repo):
    write_toy(repo, complete=False)
    assert problems(repo) == ["benchmarks/results/toy.json: a run cut short: run "
                              "'python -m benchmarks.toy --n 2' again on this commit to finish it"]
    write_toy(repo, complete=True)
    assert problems(repo) == []
