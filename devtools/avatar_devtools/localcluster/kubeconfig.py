"""Kubeconfig files and client settings that point at a localcluster API server.

The server speaks plain HTTP on 127.0.0.1 and accepts any credentials, so a kubeconfig for it
has a server URL, a namespace and a placeholder token (some clients insist on having one).
Files are written atomically (write, then rename), so a process waiting for the file to
appear, as `cluster.ClusterProcess` does, never reads half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

CONTEXT = "localcluster"
TOKEN = "localcluster"


def kubeconfig(server: str, *, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": server}}],
        "users": [{"name": CONTEXT, "user": {"token": TOKEN}}],
        "contexts": [
            {
                "name": CONTEXT,
                "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace},
            }
        ],
        "current-context": CONTEXT,
        "preferences": {},
    }


def write(path: str | os.PathLike[str], server: str, *, namespace: str = "default") -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(kubeconfig(server, namespace=namespace), sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, target)
    return target


def server_of(path: str | os.PathLike[str]) -> str:
    """The server URL of the current context of a kubeconfig file."""
    config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    context_name = config["current-context"]
    context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    return str(cluster["server"])
