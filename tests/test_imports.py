"""The project's import graph: no circles (counting imports inside functions) and no private names across modules."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("intentrec", "data", "models", "training", "serving")  # intentrec/: the plumbing (errors, config, paths)


def project_modules() -> dict[str, Path]:
    """intentrec.<dotted name> -> file, for every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            name = ".".join(parts if parts[0] == "intentrec" else ("intentrec", *parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


def imports(modules: dict[str, Path]) -> dict[str, list[tuple[str, str, int]]]:
    """module -> [(imported project module, imported name or "", line)] over the whole file, functions included."""
    found: dict[str, list[tuple[str, str, int]]] = {name: [] for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "intentrec":
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in modules:  # a submodule
                        found[name].append((f"{node.module}.{alias.name}", "", node.lineno))
                    elif node.module in modules:
                        found[name].append((node.module, alias.name, node.lineno))
            elif isinstance(node, ast.Import):
                found[name] += [(alias.name, "", node.lineno) for alias in node.names if alias.name in modules]
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_module_imports_its_importers():
    modules = project_modules()
    graph = {name: {target for target, _, _ in found if target != name} for name, found in imports(modules).items()}
    assert len(modules) > 50
    assert circles(graph) == []


def test_no_module_imports_a_private_name_of_another():
    modules = project_modules()
    private = [
        f"{modules[name].relative_to(REPO_ROOT)}:{line} imports {target}.{imported}"
        for name, found in imports(modules).items()
        for target, imported, line in found
        if imported.startswith("_") and target != name
    ]
    assert private == []


def test_the_checker_sees_a_circle_and_a_private_import(tmp_path):
    """The two checks above can fail: a made-up pair of modules trips both."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    (tmp_path / "x.py").write_text("def f():\n    from intentrec.models.losses import _hidden\n")
    found = imports({"intentrec.x": tmp_path / "x.py", "intentrec.models.losses": tmp_path / "x.py"})
    assert found["intentrec.x"] == [("intentrec.models.losses", "_hidden", 2)]


def test_scripts_import_the_installed_package_without_editing_sys_path():
    edits = [
        f"{path.name}:{number}"
        for path in sorted((REPO_ROOT / "scripts").glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "sys.path" in line
    ]
    assert not edits, f"scripts edit sys.path instead of importing intentrec: {edits}"


def test_the_serving_path_imports_no_torch_or_lightning():
    """Every Triton python model imports serving.triton_model; torch would cost each of them its import time."""
    import subprocess
    import sys

    code = (
        "import sys, intentrec.serving.triton_model, intentrec.serving.banners; "
        "print(sorted(m for m in ('torch', 'pytorch_lightning', 'lightning') if m in sys.modules))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert found == "[]", found
