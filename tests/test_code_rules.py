"""Rules the source tree keeps: short modules and functions, typed errors whose messages name
fields (never command-line flags), and nothing that runs code from a file."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CODE = ("pipeline", "trainer", "api", "tools")
LIBRARY = ("pipeline", "trainer", "api")  # tools/cli may name flags: it is the command line
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")
QUOTED = re.compile(r"`[^`]*`")  # a shell command quoted in a message (`ray start --head`)


def _sources(folders: tuple[str, ...]) -> list[pathlib.Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def _parsed(path: pathlib.Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _name(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT))


def test_modules_are_short():
    long = {
        _name(path): lines
        for path in _sources(CODE)
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_functions_are_short():
    long = {}
    for path in _sources(CODE):
        for node in ast.walk(_parsed(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{_name(path)}:{node.lineno} {node.name}"] = lines
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def _raised_calls(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            yield node, node.exc


def test_library_errors_are_typed():
    bare = [
        f"{_name(path)}:{node.lineno}"
        for path in _sources(CODE)
        for node, call in _raised_calls(_parsed(path))
        if isinstance(call.func, ast.Name) and call.func.id == "ValueError"
    ]
    assert not bare, f"bare ValueError raised (use a KdcacheError subclass): {bare}"


def _strings(node: ast.AST) -> list[str]:
    return [
        part.value
        for part in ast.walk(node)
        if isinstance(part, ast.Constant) and isinstance(part.value, str)
    ]


def test_library_messages_name_fields_not_flags():
    flagged = [
        f"{_name(path)}:{node.lineno} {found[0]}"
        for path in _sources(LIBRARY)
        for node, call in _raised_calls(_parsed(path))
        if (found := FLAG.findall(QUOTED.sub("", " ".join(_strings(call)))))
    ]
    assert not flagged, f"library error messages naming command-line flags: {flagged}"


def _loads_code(call: ast.Call) -> str | None:
    """What is wrong with a call that may run code from a file, or None."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
    keywords = {k.arg: k.value for k in call.keywords}
    if name in ("load", "loads") and owner in ("pickle", "cPickle", "dill", "cloudpickle"):
        return f"{owner}.{name}"
    if name == "load" and owner == "torch":
        safe = keywords.get("weights_only")
        if not (isinstance(safe, ast.Constant) and safe.value is True):
            return "torch.load without weights_only=True"
    pickled = keywords.get("allow_pickle")
    if pickled is not None and not (isinstance(pickled, ast.Constant) and pickled.value is False):
        return "allow_pickle"
    return None


@pytest.mark.parametrize("folders", [CODE + ("examples",)])
def test_nothing_runs_code_from_a_file(folders):
    found = [
        f"{_name(path)}:{node.lineno} {problem}"
        for path in _sources(folders)
        for node in ast.walk(_parsed(path))
        if isinstance(node, ast.Call) and (problem := _loads_code(node))
    ]
    assert not found, f"calls that can run code from a file: {found}"
