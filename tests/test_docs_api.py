"""The docs check for the Python API: every kdcache name in README.md's and docs/'s Python
blocks and inline code resolves (``kdcache.X``, ``from kdcache... import X``, the public names of
``kdcache``, ``kdcache.errors`` and the sub-packages' faces, attributes and methods such as
``TrainConfig.validate`` or ``cache.targets``), every keyword an example passes is a parameter of
what it calls, and an inline signature without ``...`` lists exactly the callable's parameters.
Every Python block compiles. Run as a script, it lists what it finds wrong."""

import ast
import builtins
import dataclasses
import importlib
import inspect
import pathlib
import re
import sys
import types
import typing

from tests.test_docs_commands import doc_files, snippets

FACES = (
    "kdcache", "kdcache.errors", "kdcache.pipeline.cache", "kdcache.pipeline.data",
    "kdcache.pipeline.teach", "kdcache.pipeline.views", "kdcache.trainer.data",
    "kdcache.trainer.kd", "kdcache.trainer.run", "kdcache.tools.cache",
)  # fmt: skip
# the names the docs give the objects of the API (`cache.targets(...)`, `batch.padded`)
VARIABLES = {
    "cache": "kdcache.Cache",
    "loader": "kdcache.KDLoader",
    "batch": "kdcache.KDBatch",
    "criterion": "kdcache.DistillationLoss",
    "manifest": "kdcache.Manifest",
    "error": "kdcache.KdcacheError",
}
# names of other libraries the docs use the way they use kdcache's (a class, or a call with
# keywords), with where they live (checked where that imports): a kdcache name that is renamed
# cannot hide as one, and a library's name the docs rely on is there
FOREIGN_NAMES = {
    "ClassificationTask": "timm.task", "LogitDistillationTask": "timm.task",
    "TokenDistillationTask": "timm.task", "FeatureDistillationTask": "timm.task",
    "TrainingTask": "timm.task", "ModelEmaV3": "timm.utils", "create_transform": "timm.data",
    "Mixup": "timm.data", "RandomErasing": "timm.data.random_erasing",
    "PosterizeIncreasing": "timm.data.auto_augment.NAME_TO_OP",
    "VisionTransformerDistilled": "timm.models.deit",
    "forward_head": "timm.models.VisionTransformer",
    "ImageFolder": "torchvision.datasets", "ColorJitter": "torchvision.transforms",
    "DataLoader": "torch.utils.data", "DistributedSampler": "torch.utils.data",
    "StorageWeakRef": "torch.multiprocessing.reductions",
    "KLDivLoss": "torch.nn", "interpolate": "torch.nn.functional",
    "decode_jpeg": "simplejpeg", "Image": "PIL", "ImageEnhance": "PIL",
    "LightningDataModule": "lightning", "LightningModule": "lightning",
    "RayJob": "KubeRay (a Kubernetes resource, not imported)",
    # not imported: S3 API operations and a field of Linux's /proc/PID/status
    "HeadObject": "S3", "GetObject": "S3", "VmHWM": "/proc",
}  # fmt: skip
# text in code that looks like an API name and is not one
NOT_API = {
    "kdcache.data_crc32": "a key of the manifest's Parquet metadata",
    "kdcache.wait_for_input": "the name of a profiler span",
}
_API_START = re.compile(r"^(?:from kdcache[\w.]* import |kdcache\.[a-z_])|^[A-Za-z_]\w*[.(]|^[A-Z]")
_SIGNATURE_ARG = re.compile(r"^(?:\*|\.\.\.|\*\*.*|[a-z_]\w*(?:=.*)?)$", re.S)


def public_names() -> dict[str, object]:
    """Every public name of ``kdcache``, ``kdcache.errors`` and the faces: the object."""
    found: dict[str, object] = {}
    for face in FACES:
        module = importlib.import_module(face)
        names = getattr(module, "__all__", None) or [
            n for n, v in vars(module).items() if isinstance(v, type) and not n.startswith("_")
        ]
        for name in names:
            found.setdefault(name, getattr(module, name))
    return found


@dataclasses.dataclass(frozen=True)
class Thing:
    """What an expression of a doc is: an object itself (a module, class, function), an
    instance of a type, or a method of a type."""

    kind: str  # "object", "instance" or "method"
    value: object
    owner: object = None  # a method's class


def _class_of(annotation) -> type | None:
    """The class of an annotation (``X | None`` is X; ``dict[str, X]`` is dict)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _class_of(inner[0]) if len(inner) == 1 else None
    origin = typing.get_origin(annotation) or annotation
    return origin if isinstance(origin, type) else None


def _hints(value) -> dict:
    try:
        return typing.get_type_hints(value)
    except Exception:  # a hint naming a type only imported for type checkers
        return {}


def _returned(function) -> Thing | None:
    annotation = _hints(function).get("return")
    return Thing("instance", annotation) if _class_of(annotation) else None


def _assigned_in(cls: type) -> set[str]:
    """Attributes a class's methods set on ``self``."""
    found = set()
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] != "kdcache":
            continue
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and isinstance(node.ctx, ast.Store)
            ):
                found.add(node.attr)
    return found


def _member(owner: Thing, attr: str) -> tuple[Thing | None, str]:
    """An attribute of a thing, or why it has none."""
    value = owner.value
    if owner.kind == "object" and isinstance(value, types.ModuleType):
        if hasattr(value, attr):
            return Thing("object", getattr(value, attr)), ""
        try:
            return Thing("object", importlib.import_module(f"{value.__name__}.{attr}")), ""
        except ImportError:
            return None, f"{value.__name__} has no {attr}"
    cls = value if owner.kind == "object" and isinstance(value, type) else None
    if owner.kind == "instance":
        cls = _class_of(value)
    if cls is None:
        return None, ""
    hints = _hints(cls)
    declared = getattr(cls, attr, None)
    if isinstance(declared, property):
        return _returned(declared.fget), ""
    if callable(declared) and not isinstance(declared, type):
        return (Thing("method", declared, cls) if owner.kind == "instance" else
                Thing("object", declared)), ""  # fmt: skip
    if attr in hints:
        return Thing("instance", hints[attr]) if _class_of(hints[attr]) else None, ""
    if hasattr(cls, attr) or attr in _assigned_in(cls):
        return None, ""
    return None, f"{cls.__name__} has no attribute {attr}"


def _signature(thing: Thing) -> tuple[str, inspect.Signature | None]:
    """The name and signature of what a call calls (a class, function, method, or an
    instance: its ``forward`` or ``__call__``)."""
    value = thing.value
    if thing.kind == "instance":
        cls = _class_of(value)
        value = getattr(cls, "forward", None) or vars(cls).get("__call__")
        name = f"{getattr(cls, '__name__', cls)} instance"
    else:
        name = getattr(value, "__qualname__", str(value))
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):
        return name, None
    parameters = list(signature.parameters.values())
    if thing.kind in ("method", "instance") and parameters and parameters[0].name == "self":
        signature = signature.replace(parameters=parameters[1:])
    return name, signature


def call_problems(thing: Thing, positional: int, keywords: list[str]) -> list[str]:
    """Keywords that are no parameter of the callable, and too many positional arguments."""
    name, signature = _signature(thing)
    if signature is None:
        return []
    kinds = [p.kind for p in signature.parameters.values()]
    params = signature.parameters
    problems = []
    if inspect.Parameter.VAR_KEYWORD not in kinds:
        problems += [f"{name}() has no parameter {k}" for k in keywords if k not in params]
    takes = sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                for k in kinds)  # fmt: skip
    if inspect.Parameter.VAR_POSITIONAL not in kinds and positional > takes:
        problems.append(f"{name}() takes {takes} positional arguments, given {positional}")
    return problems


def _result(thing: Thing) -> Thing | None:
    """What calling a thing gives."""
    if thing.kind == "object" and isinstance(thing.value, type):
        return Thing("instance", thing.value)
    if thing.kind in ("object", "method") and callable(thing.value):
        return _returned(thing.value)
    return None


class Resolver:
    """Resolves the kdcache names of a piece of code and collects what does not resolve."""

    def __init__(self, names: dict[str, object], variables: dict[str, Thing]):
        self.names, self.env, self.problems = names, dict(variables), []
        self.line = 1  # of the statement being read, in a block

    def expression(self, node: ast.AST) -> Thing | None:
        if isinstance(node, ast.Name):
            return self._name(node.id)
        if isinstance(node, ast.Attribute):
            dotted = ast.unparse(node)
            base = None if dotted in NOT_API else self.expression(node.value)
            if base is None:
                return None
            found, problem = _member(base, node.attr)
            if problem and not re.fullmatch(r"[A-Z][A-Z0-9_]*", node.attr):  # not `kdcache.X`
                self.problems.append((self.line, f"{dotted}: {problem}"))
            return found
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Subscript):
            base, _ = self.expression(node.value), self.expression(node.slice)
            if base is not None and base.kind == "instance":
                args = typing.get_args(base.value)
                item = args[-1] if _class_of(base.value) is dict else args[0] if args else None
                return Thing("instance", item) if _class_of(item) else None
            return None
        for child in ast.iter_child_nodes(node):
            self.expression(child)
        return None

    def _name(self, name: str) -> Thing | None:
        if name in self.env:
            return self.env[name]
        if name == "kdcache":
            return Thing("object", importlib.import_module("kdcache"))
        if name in self.names:
            return Thing("object", self.names[name])
        capitalised = name[0].isupper() and not re.fullmatch(r"[A-Z][A-Z0-9_]*", name)  # not N
        if capitalised and name not in FOREIGN_NAMES and not hasattr(builtins, name):
            self.problems.append((self.line, f"{name}: no kdcache name (nor another library's)"))
        return None

    def _call(self, node: ast.Call) -> Thing | None:
        for argument in [*node.args, *(k.value for k in node.keywords)]:
            self.expression(argument)
        callee = self.expression(node.func)
        called = ast.unparse(node.func)
        if callee is None:
            unknown = isinstance(node.func, ast.Name) and called not in FOREIGN_NAMES
            if unknown and node.keywords and not hasattr(builtins, called):
                self.problems.append(
                    (self.line, f"{called}(): no kdcache callable (nor another's)")
                )
            return None
        positional = sum(  # `f(a, b, ...)`: "and more", not a third argument
            not isinstance(a, ast.Starred) and not (isinstance(a, ast.Constant) and a.value is ...)
            for a in node.args
        )
        keywords = [k.arg for k in node.keywords if k.arg]
        self.problems += [(self.line, f"{called}: {p}")
                          for p in call_problems(callee, positional, keywords)]  # fmt: skip
        return _result(callee)

    def statements(self, body: list[ast.stmt]) -> None:
        for node in body:
            self.line = node.lineno
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                self.env[node.targets[0].id] = self.expression(node.value)
            elif isinstance(node, ast.For) and isinstance(node.target, ast.Name):
                self.env[node.target.id] = self._element(self.expression(node.iter))
                self.statements(node.body)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kdcache"):
                module = importlib.import_module(node.module)
                self.problems += [(self.line, f"from {node.module} import {a.name}: no such name")
                                  for a in node.names if not hasattr(module, a.name)]  # fmt: skip
            elif hasattr(node, "body"):
                self.statements(node.body)
            else:
                self.expression(node)

    def _element(self, iterable: Thing | None) -> Thing | None:
        """What iterating over an instance yields, by its ``__iter__``'s annotation."""
        if iterable is None or iterable.kind != "instance":
            return None
        annotation = _hints(getattr(_class_of(iterable.value), "__iter__", None)).get("return")
        args = typing.get_args(annotation)
        return Thing("instance", args[0]) if args and _class_of(args[0]) else None


def _variables(names: dict[str, object]) -> dict[str, Thing]:
    found = {}
    for variable, dotted in VARIABLES.items():
        found[variable] = Thing("instance", names[dotted.rpartition(".")[2]])
    return found


def _split_arguments(text: str) -> list[str]:
    """A call's arguments split at top-level commas."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [p for p in [*parts, current.strip()] if p]


def signature_problems(callee: Thing, arguments: list[str]) -> list[str]:
    """A documented signature (`KDLoader(data, cache=None, *, batch_size, ...)`) against the
    callable's: each name a parameter, positional names in place, and without ``...`` every
    parameter named."""
    name, signature = _signature(callee)
    if signature is None:
        return []
    real = [p.name for p in signature.parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]  # fmt: skip
    takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    named, problems, position = [], [], 0
    for argument in arguments:
        if argument in ("*", "...") or argument.startswith("**"):
            position = None if argument in ("*", "...") else position
            continue
        word = argument.partition("=")[0].strip()
        named.append(word)
        if word not in real and not takes_any:
            problems.append(f"{name}() has no parameter {word}")
        elif position is not None and real[position : position + 1] != [word]:
            where = real[position] if position < len(real) else "none"
            problems.append(f"{name}(): parameter {position + 1} is {where}, not {word}")
        if position is not None:
            position += 1
    if "..." not in arguments and not problems and set(real) - set(named):
        problems.append(f"{name}() also takes {', '.join(p for p in real if p not in named)}")
    return problems


_FILE_NAME = re.compile(
    r"^[\w./<>-]+\.(?:zarr|parquet|json|pth|csv|png|py|md|tar|yaml|log|toml|jpg)$"
)


def _is_signature(arguments: list[str]) -> bool:
    """Arguments that document a signature rather than make a call: a bare ``*`` or ``**``,
    an empty default (`crop_pct=`), or parameter names beside defaults (`location,
    data=None`; `url, storage_options=...` is a call)."""
    if not all(_SIGNATURE_ARG.match(a) for a in arguments):
        return False
    bare = [a for a in arguments if re.fullmatch(r"[a-z_]\w*", a)]
    marks = any(a == "*" or a.startswith("**") or a.endswith("=") for a in arguments)
    defaults = [a for a in arguments if "=" in a and not a.endswith("=...")]
    return marks or (bool(bare) and bool(defaults))


def inline_problems(text: str, resolver: Resolver) -> list[str]:
    """What does not resolve in an inline span that names the API."""
    if _FILE_NAME.match(text) or not _API_START.match(text) or text in NOT_API:
        return []
    resolver.problems = []
    called = re.fullmatch(r"([A-Za-z_][\w.]*)\((.*)\)", text, re.S)
    arguments = _split_arguments(called.group(2)) if called else []
    if called and _is_signature(arguments):
        callee = resolver.expression(ast.parse(called.group(1), mode="eval").body)
        found = [p for _, p in resolver.problems]
        return found + (signature_problems(callee, arguments) if callee else [])
    try:
        resolver.statements(ast.parse(text).body)
    except SyntaxError:  # prose in code (`kdcache.errors.CacheCorrupt: CACHE: ...`): its name
        leading = re.match(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", text).group()
        if "." in leading:  # not a message's first word (`Ray address auto: ...`)
            resolver.expression(ast.parse(leading, mode="eval").body)
    return [p for _, p in resolver.problems]


def python_blocks(page: pathlib.Path) -> list[tuple[int, str]]:
    """(first line, source) of a page's Python blocks."""
    blocks, current = [], None
    for number, line in enumerate(page.read_text("utf-8").splitlines(), 1):
        if current is None and re.match(r"^\s*```python\s*$", line):
            current = (number + 1, [])
        elif current is not None and line.strip().startswith("```"):
            blocks.append((current[0], "\n".join(current[1])))
            current = None
        elif current is not None:
            current[1].append(line)
    return blocks


def problems(pages: list[pathlib.Path]) -> list[str]:
    """Every Python block that does not compile, and every API name or keyword of the docs
    the code does not have, one line each with page and line."""
    names = public_names()
    variables = _variables(names)
    found = []
    for page in pages:
        where = str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else page.name
        for line, source in python_blocks(page):
            try:
                tree = compile(source, f"{where}:{line}", "exec", ast.PyCF_ONLY_AST)
            except SyntaxError as error:
                found.append(
                    f"{where}:{line + (error.lineno or 1) - 1}: does not compile: {error.msg}"
                )
                continue
            resolver = Resolver(names, {})
            resolver.statements(tree.body)
            found += [f"{where}:{line + at - 1}: {p}" for at, p in resolver.problems]
        for snippet in snippets(page):
            if not snippet.fenced:
                resolver = Resolver(names, variables)
                found += [f"{where}:{snippet.line}: `{snippet.text}`: {p}"
                          for p in inline_problems(snippet.text, resolver)]  # fmt: skip
    return found


def test_every_api_name_and_python_block_of_readme_and_docs_is_the_code_s():
    found = problems(doc_files())
    assert not found, "\n".join(["the code lacks:", *found])


BROKEN_PAGE = """# API

`kdcache.open_cach` and `TeachConfig(manifest=DATA, topk=5, views=4)`, `cache.target(row=1)`,
`batch.imgs`, `TrainConfig.valdate()`, `from kdcache import Shard`,
`KDLoader(data, cache=None, *, batch_size)`, `kdcache.errors.CacheCorupt: CACHE: bad`,
`EvalView`; right: `cache.verify().ok`, `len(loader)`, `kdcache.KDTask(student, criterion, ...)`.

```python
import kdcache

loader = kdcache.KDLoader("data", batchsize=1)
for batch in loader:
    print(batch.image, batch.teacher_targets["t"].topk_logit)
```

```python
def broken(:
```
"""


def _owner(path: str) -> object | None:
    """The object at a dotted path (a module, then attributes), or None if none imports."""
    words = path.split(" ")[0].split(".")
    for cut in range(len(words), 0, -1):
        try:
            found = importlib.import_module(".".join(words[:cut]))
        except ImportError:
            continue
        for word in words[cut:]:
            found = getattr(found, word, None)
        return found
    return None


def test_the_other_libraries_names_the_docs_use_are_there():
    missing = []
    for name, where in FOREIGN_NAMES.items():
        owner = _owner(where)
        if owner is None or (isinstance(owner, dict) and name in owner):
            continue
        if not hasattr(owner, name) and _owner(f"{where}.{name}") is None:  # PIL.Image
            missing.append(f"{name}: not in {where}")
    assert not missing, missing


def test_a_wrong_name_keyword_or_signature_is_reported_with_page_and_line(tmp_path):
    page = tmp_path / "api.md"
    page.write_text(BROKEN_PAGE)
    assert problems([page]) == [
        "api.md:11: kdcache.KDLoader: KDLoader() has no parameter batchsize",
        "api.md:13: batch.image: KDBatch has no attribute image",
        "api.md:13: batch.teacher_targets['t'].topk_logit: Targets has no attribute topk_logit",
        "api.md:17: does not compile: invalid syntax",
        "api.md:3: `kdcache.open_cach`: kdcache.open_cach: kdcache has no open_cach",
        "api.md:3: `TeachConfig(manifest=DATA, topk=5, views=4)`: TeachConfig: TeachConfig() has "
        "no parameter views",
        "api.md:3: `cache.target(row=1)`: cache.target: Cache has no attribute target",
        "api.md:4: `batch.imgs`: batch.imgs: KDBatch has no attribute imgs",
        "api.md:4: `TrainConfig.valdate()`: TrainConfig.valdate: TrainConfig has no attribute "
        "valdate",
        "api.md:4: `from kdcache import Shard`: from kdcache import Shard: no such name",
        "api.md:5: `KDLoader(data, cache=None, *, batch_size)`: KDLoader() also takes workers, "
        "resolution, teachers, topk, plan, split, seed, shuffle_buffer, view_schedule, "
        "pin_memory, drop_last, storage_options",
        "api.md:5: `kdcache.errors.CacheCorupt: CACHE: bad`: kdcache.errors.CacheCorupt: "
        "kdcache.errors has no CacheCorupt",
        "api.md:6: `EvalView`: EvalView: no kdcache name (nor another library's)",
    ]


ROOT = pathlib.Path(__file__).resolve().parents[1]


if __name__ == "__main__":
    found = problems(doc_files())
    print("\n".join(found) or "every API name of the docs resolves")
    sys.exit(1 if found else 0)
