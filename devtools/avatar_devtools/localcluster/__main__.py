"""`python -m avatar_devtools.localcluster`: serve an emulated cluster until interrupted.

    python -m avatar_devtools.localcluster --port 8001 --kubeconfig ./kubeconfig \\
        --crd crds/ --fleet examples/fleet.yaml

Serves on 127.0.0.1:PORT (0 picks a free port), loads the CRDs, then the objects of `--apply`
files, creates the fleet's Nodes and runs the simulated kubelet for them, and only then writes
the kubeconfig (atomically): a script may wait for the file to appear and use it at once.
SIGINT or SIGTERM stop it cleanly (processes of pods are terminated).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from avatar_devtools.localcluster import cluster, errors, fleet

logger = logging.getLogger("avatar_devtools.localcluster")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_devtools.localcluster",
        description="An emulated Kubernetes API server and simulated kubelet on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--kubeconfig", type=Path, required=True, help="write a kubeconfig here")
    parser.add_argument("--namespace", default="default", help="the kubeconfig's namespace")
    parser.add_argument(
        "--crd",
        type=Path,
        action="append",
        default=[],
        help="CRD YAML to load, or a directory of them (every *.yaml: crds/); repeatable",
    )
    parser.add_argument(
        "--apply", type=Path, action="append", default=[], help="manifests to create (repeatable)"
    )
    parser.add_argument("--fleet", type=Path, help="fleet YAML: simulated nodes and kubelet")
    parser.add_argument(
        "--kubelet-mode", choices=["phases", "process"], help="override the fleet's kubelet mode"
    )
    parser.add_argument("--workdir", type=Path, help="where pods run as processes keep files")
    parser.add_argument(
        "--history", type=int, default=4096, help="watch events kept per resource for resume"
    )
    parser.add_argument(
        "--bookmark-interval", type=float, default=10.0, help="seconds between watch bookmarks"
    )
    parser.add_argument(
        "--lenient-crds",
        action="store_true",
        help="accept CRD schemas a real API server refuses as non-structural (with a warning)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    crds = [m for path in args.crd for m in cluster.load_manifest_files(path)]
    objects = [m for path in args.apply for m in cluster.load_manifests(path)]
    local = cluster.LocalCluster(
        port=args.port,
        crds=crds,
        objects=objects,
        fleet_spec=fleet.load(args.fleet) if args.fleet else None,
        kubelet_mode=args.kubelet_mode,
        workdir=args.workdir,
        history=args.history,
        bookmark_interval=args.bookmark_interval,
        strict_crd_schemas=not args.lenient_crds,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await local.start()
    try:
        local.write_kubeconfig(args.kubeconfig, namespace=args.namespace)
        logger.info(
            "localcluster ready", extra={"url": local.url, "kubeconfig": str(args.kubeconfig)}
        )
        await stop.wait()
    finally:
        await local.aclose()
        with contextlib.suppress(FileNotFoundError):
            args.kubeconfig.unlink()


_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _ExtraFormatter(logging.Formatter):
    """Log lines with the record's `extra={...}` fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRIBUTES}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_ExtraFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    try:
        asyncio.run(_serve(args))
    except errors.ApiError as e:
        logger.error("could not load the cluster", extra={"error": e.message})
        return 1
    except (fleet.FleetError, OSError) as e:
        logger.error("could not start", extra={"error": str(e)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
