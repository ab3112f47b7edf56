"""The project's code as a graph, read from the source (AST): which module imports which, and
which params each module reads. Used by the tests of import cycles and of dvc.yaml's truth.

Imports count wherever they are written (module level or inside a function: a lazy import is
still code the caller runs). Dynamic imports (``importlib.import_module``) are not seen; the
CLI's sub-command table is the only one, and each stage is analysed from its own module.

A *param read* is an attribute chain ``<config>.<section>[.<key>]`` where ``<config>`` is the
project config by name: ``cfg``, ``config``, ``params``, ``self.cfg``, ``self.config`` or a
call of ``load_params`` / ``config_from_args``. The code follows that naming (a checkpoint's
config is called ``trained``, a section is passed on as an object), so a section passed whole
(``cfg.extract``) counts as every key of it.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Import name -> folder, for the project's two packages.
PACKAGES = {"tempstop": ROOT / "src" / "tempstop", "tempstop_pipelines": ROOT / "pipelines"}
CONFIG_NAMES = {"cfg", "config", "params"}
CONFIG_CALLS = {"load_params", "config_from_args"}


def module_file(name: str) -> Path | None:
    """The file of a project module (``pkg/__init__.py`` for a package); None if not ours."""
    top, *rest = name.split(".")
    if top not in PACKAGES:
        return None
    base = PACKAGES[top].joinpath(*rest)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    path = base.with_suffix(".py")
    return path if path.is_file() else None


def module_name(path: Path) -> str:
    for top, folder in PACKAGES.items():
        if path.is_relative_to(folder):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            return ".".join([top, *parts])
    raise ValueError(f"{path} is not in a project package")


def all_modules() -> list[str]:
    return sorted(module_name(p) for folder in PACKAGES.values() for p in folder.rglob("*.py"))


@cache
def _tree(name: str) -> ast.Module:
    return ast.parse(module_file(name).read_text(encoding="utf-8"))


@cache
def imports(name: str, top_level: bool = False) -> frozenset[str]:
    """The project modules ``name`` imports explicitly (``from pkg import mod`` -> ``pkg.mod``);
    with ``top_level``, only those its module body imports (not inside functions)."""
    is_pkg = module_file(name).name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    tree = _tree(name)
    nodes = _top_level(tree) if top_level else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if module_file(a.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if module_file(sub):
                    found.add(sub)
                elif module_file(target):
                    found.add(target)
    found.discard(name)
    return frozenset(found)


def _top_level(tree: ast.Module):
    """The statements a module runs when imported (not function or class bodies' functions)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def reachable(start: str) -> set[str]:
    """Every project module that running ``start`` can import. A package that is only the
    parent of an imported module counts with what its ``__init__`` imports when loaded."""
    seen: set[str] = set()
    todo = [(start, False)]
    while todo:
        name, implicit = todo.pop()
        key = (name, implicit)
        if key in seen or not module_file(name):
            continue
        seen.add(key)
        todo.extend((m, False) for m in imports(name, top_level=implicit))
        parts = name.split(".")
        todo.extend((".".join(parts[:i]), True) for i in range(1, len(parts)))
    return {name for name, _ in seen}


def cycles() -> list[list[str]]:
    """Import cycles among the project's modules (strongly connected components > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in imports(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for mod in all_modules():
        if mod not in index:
            visit(mod)
    return out


def _is_config(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in CONFIG_NAMES
    if isinstance(node, ast.Attribute):
        return isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in {"cfg", "config"}
    if isinstance(node, ast.Call):
        func = node.func
        return (func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)) in CONFIG_CALLS
    return False


@cache
def param_reads(name: str, sections: tuple[tuple[str, tuple[str, ...]], ...]) -> frozenset[str]:
    """``section`` or ``section.key`` reads in module ``name`` (``sections``: attribute name,
    e.g. ``validate_``, and its keys, as :func:`schema_sections` gives them)."""
    keys = dict(sections)
    tree = _tree(name)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in keys and _is_config(node.value):
            section = node.attr.rstrip("_")
            parent = parents.get(node)
            if isinstance(parent, ast.Attribute) and parent.value is node and parent.attr in keys[node.attr]:
                found.add(f"{section}.{parent.attr}")
            else:
                found.add(section)
    return frozenset(found)


def schema_sections() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(attribute name, its keys)`` of every section of the params schema."""
    from tempstop.config import ProjectConfig

    return tuple(
        (name, tuple(field.annotation.model_fields)) for name, field in ProjectConfig.model_fields.items()
    )


def code_deps(modules: set[str], folders: tuple[str, ...]) -> list[str]:
    """What dvc.yaml should list as a stage's code deps for ``modules``: each of ``folders``
    (paths relative to the root) whose every module is among them, then the remaining files."""
    files = {str(module_file(m).relative_to(ROOT)) for m in modules}
    out = []
    for folder in folders:
        inside = {str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob("*.py")}
        if inside and inside <= files:
            out.append(folder)
            files -= inside
    return sorted(files | set(out))
