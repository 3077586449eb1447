"""The operator image installs only the `operator` extra (operator/Dockerfile): what
`python -m avatar_operator` imports — the dispatcher and the relay included — must come from it,
never from the worker's stack (torch, PyAV, VideoSDK) or the test tools."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
WORKER_ONLY = ("avatar_worker", "torch", "av", "videosdk", "cv2", "numpy", "safetensors")
# Installed here for tests and the worker, absent from the image: hidden, as if not installed
# (kopf and kubernetes_asyncio import `kubernetes` and `kubernetes_validate` when they can).
ABSENT_FROM_THE_IMAGE = (
    *WORKER_ONLY,
    "kubernetes",
    "kubernetes_validate",
    "helm_python",
    "hypothesis",
    "pytest",
    "cryptography",  # PyJWT's optional backend (HS256 needs none)
)


def _imported_by_the_operator() -> set[str]:
    code = (
        "import sys\n"
        "before = set(sys.modules)  # the interpreter's own start-up\n"
        f"for name in {ABSENT_FROM_THE_IMAGE!r}:\n"
        "    sys.modules[name] = None  # import raises ImportError, as in the image\n"
        "import avatar_operator.__main__, avatar_operator.runner, avatar_operator.launch\n"
        "import avatar_operator.kopf_app\n"
        "new = {m.split('.')[0] for m, v in sys.modules.items() if m not in before and v}\n"
        "print(','.join(sorted(new)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.strip().split(","))


def test_the_operator_imports_nothing_of_the_worker() -> None:
    imported = _imported_by_the_operator()  # fails if it needs one of them
    assert "avatar_operator" in imported


def _requirement_closure(names: set[str]) -> set[str]:
    """The distributions `names` install, their dependencies included (extras not asked for
    left out), as pip would resolve them: normalised names."""
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


def test_every_third_party_import_is_installed_by_the_operator_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["operator"]
    installed = _requirement_closure({Requirement(d).name for d in declared})
    distributions = metadata.packages_distributions()
    missing = {}
    for module in _imported_by_the_operator():
        owners = {canonicalize_name(d) for d in distributions.get(module, [])}
        if owners and module not in ABSENT_FROM_THE_IMAGE and not owners & installed:
            missing[module] = sorted(owners)
    owners_of_ours = {"avatar-operator"}  # this project's own packages
    missing = {m: d for m, d in missing.items() if not set(d) & owners_of_ours}
    assert not missing, f"imported by the operator, not installed by its extra: {missing}"
