"""Which of the project's packages may import which, read from the source (every `import`, at
module level or inside a function): the SDK is the floor and imports none of the others; the
operator and the worker build on the SDK only; the dev tools may use everything, and nothing of
the product imports them (they never ship in an image)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "avatar_sdk": ROOT / "sdk" / "avatar_sdk",
    "avatar_operator": ROOT / "operator" / "avatar_operator",
    "avatar_worker": ROOT / "worker-image" / "avatar_worker",
    "avatar_devtools": ROOT / "devtools" / "avatar_devtools",
}
ALLOWED = {
    "avatar_sdk": {"avatar_sdk"},
    "avatar_operator": {"avatar_sdk", "avatar_operator"},
    "avatar_worker": {"avatar_sdk", "avatar_worker"},
    "avatar_devtools": set(PACKAGES),
}


def imported_packages(source: Path) -> dict[str, int]:
    """The project's own top-level packages that `source` imports, each with its first line."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                found.setdefault(top, node.lineno)
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_package_imports_only_what_it_builds_on(package: str) -> None:
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {other}"
        for path in sorted(PACKAGES[package].rglob("*.py"))
        for other, line in imported_packages(path).items()
        if other not in ALLOWED[package]
    ]
    assert not offending, f"{package} may import only {sorted(ALLOWED[package])}: {offending}"


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from avatar_devtools.localcluster import cluster\n")
    assert imported_packages(module) == {"avatar_devtools": 2}
