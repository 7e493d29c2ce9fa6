"""Services and tasks never import each other both ways (a cycle).

Tasks import services; services queue tasks by their registered name through
``cxrplatform.jobs`` and never import a tasks module. Imports inside functions
count: the modules are read with ``ast``, every import statement anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES = sorted((REPO_ROOT / "apps").glob("*/services.py"))
TASKS = sorted((REPO_ROOT / "apps").glob("*/tasks.py"))


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)


def _imports(path: Path) -> set[str]:
    """Every module an import statement in ``path`` can name, at any depth of the code."""
    package = _module(path).rsplit(".", 1)[0].split(".")
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from .tasks import y
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # from pkg import mod
    return names


def test_imports_inside_functions_are_seen():
    # retrain_if_enough_labels imports the registry services inside the task body.
    assert "apps.models.services" in _imports(REPO_ROOT / "apps" / "models" / "tasks.py")


def test_no_services_module_imports_a_tasks_module_that_imports_it():
    assert SERVICES
    assert TASKS
    imports = {_module(path): _imports(path) for path in SERVICES + TASKS}
    cycles = [
        (services, tasks)
        for services in map(_module, SERVICES)
        for tasks in map(_module, TASKS)
        if tasks in imports[services] and services in imports[tasks]
    ]
    assert cycles == []
