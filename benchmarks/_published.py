"""The published results (``benchmarks/published.toml``): check them, or re-make them.

Every file in ``benchmarks/results/`` belongs to one manifest entry (``<name>.json``,
``<name>.md`` and the entry's ``files``), and ``<name>.json``'s ``meta`` must show it was made
by exactly the entry's command, on a commit with no uncommitted changes, by the version of its
script in the tree (``script_sha256``), merging only files made by manifest commands, to its
end (a run cut short, ``complete`` false, is finished by running its command again), and that
no command names a path outside the repository. An entry with ``stale = "reason"`` is exempt,
and reported. Standard library only.

    python -m benchmarks._published           # check; exit 1 on a problem (CI: a test)
    python -m benchmarks._published run [NAME ...]   # make bench [B=NAME]: run the commands

Example:
    >>> problems, stale = check()
    >>> problems
    []
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from benchmarks._provenance import ROOT, script_sha256

MANIFEST = Path("benchmarks/published.toml")
RESULTS = Path("benchmarks/results")
PREFIX = ["python", "-m"]


@dataclass(frozen=True)
class Entry:
    """One published results file: its name, command, stale reason and extra files."""

    name: str
    command: str
    stale: str | None = None
    files: tuple[str, ...] = ()

    @property
    def script(self) -> str:
        """``llm`` for ``python -m benchmarks.llm ...``."""
        return shlex.split(self.command)[2].removeprefix("benchmarks.")


def load_manifest(root: Path = ROOT) -> dict[str, Entry]:
    """The entries of ``benchmarks/published.toml``, in order; a malformed entry raises
    ValueError naming it."""
    entries = {}
    for name, raw in tomllib.loads((root / MANIFEST).read_text()).items():
        unknown = set(raw) - {"command", "stale", "files"}
        words = shlex.split(raw.get("command", ""))
        if unknown or len(words) < 3 or words[:2] != PREFIX or not words[2].startswith(
                "benchmarks.") or not (root / "benchmarks" / f"{words[2][11:]}.py").is_file():
            raise ValueError(f"{MANIFEST} [{name}]: needs command = \"python -m benchmarks.X "
                             f"...\" with benchmarks/X.py present and only command, stale, "
                             f"files; got {raw}")
        entries[name] = Entry(name, raw["command"], raw.get("stale"),
                              tuple(raw.get("files", ())))
    return entries


def outside_paths(command: str, root: Path = ROOT) -> list[str]:
    """The arguments of ``command`` that name a path outside ``root`` (absolute, ``~`` or
    climbing out with ``..``).

    >>> outside_paths("python -m benchmarks.llm --peer /work/venv/bin/python --out runs/x")
    ['/work/venv/bin/python']
    """
    found = []
    for word in shlex.split(command):
        value = word.split("=", 1)[-1] if word.startswith("--") else word
        if value.startswith(("/", "~")) or (
                ".." in Path(value).parts and not (root / value).resolve().is_relative_to(root)):
            found.append(value)
    return found


def check_result(entry: Entry, meta: dict, commands: set[str], root: Path = ROOT) -> list[str]:
    """What is wrong with one results file's ``meta`` for its manifest ``entry``."""
    where = f"{RESULTS}/{entry.name}.json"
    problems = []
    if meta.get("command") != entry.command:
        problems.append(f"{where}: made by {meta.get('command')!r}, not its manifest command "
                        f"{entry.command!r}")
    for path in outside_paths(meta.get("command") or "", root):
        problems.append(f"{where}: its command names {path!r}, outside the repository")
    if not meta.get("commit"):
        problems.append(f"{where}: no commit recorded")
    if meta.get("dirty", True):
        problems.append(f"{where}: made with uncommitted changes to "
                        f"{meta.get('dirty', 'files not recorded')}")
    if meta.get("script_sha256") != script_sha256(entry.script, root):
        problems.append(f"{where}: made by another version of benchmarks/{entry.script}.py "
                        "than the one in the tree: re-run its command")
    if meta.get("complete") is False:
        problems.append(f"{where}: a run cut short: run {entry.command!r} again on this "
                        "commit to finish it")
    for merged in meta.get("merged", []):
        if merged.get("command") not in commands or merged.get("commit") != meta.get("commit"):
            problems.append(f"{where}: merges {merged.get('file')} made by "
                            f"{merged.get('command')!r} on {merged.get('commit')}, not a "
                            "manifest command on the same commit")
    return problems


def check(root: Path = ROOT) -> tuple[list[str], list[str]]:
    """``(problems, stale)``: every problem with the results files and the manifest, and one
    line per entry marked stale."""
    entries = load_manifest(root)
    commands = {e.command for e in entries.values()}
    problems, stale = [], []
    owned = {f for e in entries.values() for f in (f"{e.name}.json", f"{e.name}.md", *e.files)}
    for path in sorted((root / RESULTS).glob("*")):
        # (hidden: a results file being written atomically right now)
        if path.is_file() and path.name not in owned and not path.name.startswith("."):
            problems.append(f"{RESULTS}/{path.name}: no entry in {MANIFEST} makes it: add its "
                            "command there, or delete it")
    for entry in entries.values():
        problems += [f"{MANIFEST} [{entry.name}]: its command names {p!r}, outside the "
                     "repository" for p in outside_paths(entry.command, root)]
        path = root / RESULTS / f"{entry.name}.json"
        if entry.stale:
            stale.append(f"{RESULTS}/{entry.name}.json is stale: {entry.stale}")
        elif not path.is_file():
            problems.append(f"{RESULTS}/{entry.name}.json: missing; run `{entry.command}`")
        else:
            meta = json.loads(path.read_text()).get("meta", {})
            problems += check_result(entry, meta, commands, root)
    return problems, stale


def run(names: list[str], root: Path = ROOT) -> None:
    """Run the manifest's commands (all, or those of ``names``) in order with this Python."""
    entries = load_manifest(root)
    unknown = sorted(set(names) - set(entries))
    if unknown:
        sys.exit(f"not in {MANIFEST}: {unknown}; published: {list(entries)}")
    for entry in entries.values():
        if names and entry.name not in names:
            continue
        print(f"== {entry.command}", flush=True)
        subprocess.run([sys.executable, *shlex.split(entry.command)[1:]], cwd=root, check=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        run(argv[1:])
        return
    problems, stale = check()
    print("\n".join([*stale, *problems]) or "every published result is current")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
