"""The tree shows the data flow, and its dependency rules hold (docs/contributing.md → Layout)."""

import ast
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOPS = ("pipeline", "trainer", "tools")
FACES = [f"kdcache.{top}.{p.name}" for top in TOPS[:2] for p in (ROOT / top).iterdir()
         if (p / "__init__.py").exists()] + ["kdcache.tools.cache"]  # fmt: skip


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for top in (*TOPS, "api"):
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(("kdcache", *(parts if top != "api" else parts[1:])))
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_every_package_folder_installs_under_kdcache():
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    folders = ["kdcache"] + [
        "kdcache." + ".".join(p.parent.relative_to(ROOT).parts)
        for top in TOPS
        for p in (ROOT / top).rglob("__init__.py")
    ]
    assert sorted(listed) == sorted(folders)


def test_no_two_modules_share_a_name():
    """Module files are unique by name (packages by concern, such as ``data``, may repeat in
    pipeline and trainer: their faces are named by their parent)."""
    names = [path.stem for path in _modules().values() if path.stem not in ("__init__", "__main__")]
    assert {n for n in names if names.count(n) > 1} == set()


RAY_MODULES = ("kdcache.pipeline.teach.ray_pool", "kdcache.pipeline.teach.ray_connect")


def test_dependencies_run_one_way():
    """pipeline never imports trainer or tools; trainer imports pipeline and its own sibling
    packages only through their faces; Ray is imported by the teach job's pool and connection alone."""
    for name, path in _modules().items():
        imports = _imports(path)
        if name.startswith("kdcache.pipeline"):
            assert not any(i.startswith(("kdcache.trainer", "kdcache.tools")) for i in imports), (
                name
            )
        if name.startswith("kdcache.trainer"):
            own = ".".join(name.split(".")[:3])
            for i in imports:
                if i.startswith("kdcache.") and not i.startswith(own) and i != "kdcache":
                    shared = i == "kdcache.errors" or i.startswith("kdcache._")
                    assert i in FACES or shared, f"{name} imports {i}"
        if "ray" in imports or any(i.startswith("ray.") for i in imports):
            assert name in RAY_MODULES, f"{name} imports Ray"


def test_faces_name_no_export_after_a_module():
    """A face's lazy name must not equal a module of its package (importing the module would
    shadow the name with the module object)."""
    import importlib

    for face in FACES:
        package = importlib.import_module(face)
        folder = pathlib.Path(package.__file__).parent
        modules = {p.stem for p in folder.glob("*.py")}
        assert set(package.__all__) & modules == set(), face
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{face}.{name}"
