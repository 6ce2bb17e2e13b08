"""The library prints only through `tfcompress.core.progress.print_msg` (stdout, or the
``tfcompress`` logger when Keras's interactive logging is off); the command line prints its
own results."""

import ast
import logging
from pathlib import Path

import keras

from tfcompress.core.progress import print_msg

PACKAGE = Path(__file__).resolve().parent.parent / "tfcompress"
# the CLI's results and errors, and the JSON line a measuring subprocess hands its parent
PRINTS_ITS_OUTPUT = {"cli.py", "export/_memprobe.py"}


def test_no_print_call_in_the_library():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name in PRINTS_ITS_OUTPUT:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "print"):
                found.append(f"{name}:{node.lineno}")
    assert found == []


def test_print_msg_writes_stdout_or_the_log_as_keras_does(capsys, caplog):
    print_msg("export: converting")
    assert capsys.readouterr().out == "export: converting\n"
    keras.config.disable_interactive_logging()
    try:
        with caplog.at_level(logging.INFO, logger="tfcompress"):
            print_msg("export: verifying")
    finally:
        keras.config.enable_interactive_logging()
    assert capsys.readouterr().out == ""
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("tfcompress", "export: verifying")]
