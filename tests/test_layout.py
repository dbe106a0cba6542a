"""The package's one layering rule (docs/architecture.md): a module imports only from its own
layer or from lower layers, so there is no import cycle between layers and no upward import."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cagnet"
# Lowest first; a module's layer is the first entry that its dotted name starts with.
LAYERS = (
    ("cagnet.errors", "cagnet.utils", "cagnet.config"),
    ("cagnet.datasets", "cagnet.class_embeddings"),
    ("cagnet.models",),
    ("cagnet.losses", "cagnet.metrics"),
    ("cagnet.report",),
    ("cagnet.engine",),
    ("cagnet.baselines",),
    ("cagnet.inference",),
    ("cagnet.tools",),
    ("cagnet.commands", "cagnet.cli", "cagnet.__main__", "cagnet.api", "cagnet"),
)


def layer_of(module: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py")


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [name for name in names if name == "cagnet" or name.startswith("cagnet.")]


def test_no_module_imports_from_a_higher_layer() -> None:
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for name in imported_modules(path):
            if name != "cagnet" and layer_of(name) > layer_of(module):
                violations.append(f"{module} imports {name}")
    assert not violations, "\n".join(violations)
