"""Where the real control plane's binaries come from: `hack/kube/build.sh` builds them from the
pinned Go modules into a cache outside the repository (a second build is a cache hit), or
`AVATAR_KUBE_BIN` names a directory that already holds them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "helm",
)
BUILD_SCRIPT = Path("hack") / "kube" / "build.sh"
GO_MISSING = (
    "no 'go' on PATH: the real control plane is built from Kubernetes' Go modules; "
    "install Go >= 1.26 (https://go.dev/dl/) or set AVATAR_KUBE_BIN to a directory with "
    + ", ".join(BINARIES)
)


class BinariesUnavailable(RuntimeError):
    """The binaries are neither built nor buildable here; the message says why and what to do."""


def repo_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The repository holding `hack/kube/build.sh`: above `start` (default: the working
    directory), else above this file (an editable install)."""
    candidates = [Path(start or os.getcwd()).resolve()]
    candidates.append(Path(__file__).resolve().parent)
    for candidate in candidates:
        for directory in (candidate, *candidate.parents):
            if (directory / BUILD_SCRIPT).is_file():
                return directory
    raise BinariesUnavailable(f"no {BUILD_SCRIPT} above {candidates[0]}: run from the repository")


def _complete(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in BINARIES)


def bin_dir(root: Path | None = None, *, build: bool = True) -> Path:
    """The directory with the binaries, building them if needed (minutes when cold; the
    build's progress goes to stderr)."""
    override = os.environ.get("AVATAR_KUBE_BIN")
    if override:
        directory = Path(override)
        if not _complete(directory):
            missing = [n for n in BINARIES if not os.access(directory / n, os.X_OK)]
            raise BinariesUnavailable(f"AVATAR_KUBE_BIN={override} lacks {', '.join(missing)}")
        return directory
    root = root or repo_root()
    script = root / BUILD_SCRIPT
    if not build:
        out = subprocess.run(
            ["bash", str(script), "--print-dir"], check=True, capture_output=True, text=True
        )
        directory = Path(out.stdout.strip().splitlines()[-1])
        if not _complete(directory):
            raise BinariesUnavailable(f"not built yet: run {BUILD_SCRIPT}")
        return directory
    result = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode == 3 and shutil.which("go") is None:
        raise BinariesUnavailable(GO_MISSING)
    if result.returncode != 0 or not lines:
        raise BinariesUnavailable(
            f"{BUILD_SCRIPT} failed (exit {result.returncode}); its output above says why"
        )
    directory = Path(lines[-1])
    if not _complete(directory):
        raise BinariesUnavailable(f"{BUILD_SCRIPT} printed {directory}, which lacks binaries")
    return directory


def unavailable_reason(root: Path | None = None) -> str | None:
    """Why the binaries can be neither found nor built here, or None (`AVATAR_KUBE_BIN` set,
    Go on the PATH, or built before on a machine with Go)."""
    if os.environ.get("AVATAR_KUBE_BIN") or shutil.which("go"):
        return None
    try:
        bin_dir(root, build=False)
    except (BinariesUnavailable, OSError, subprocess.CalledProcessError, IndexError):
        return GO_MISSING
    return None
