"""`python -m avatar_operator`: run the operator (flags override `AVATAR_OPERATOR_*` env)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import pydantic

from avatar_operator import launch, relaytls, runner
from avatar_operator import settings as settings_mod
from avatar_sdk import logs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_operator",
        description="Reconcile AvatarSessions into worker Pods. Every setting can also be given "
        f"as an environment variable {settings_mod.ENV_PREFIX}<NAME>.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        default=None,
        help="watch this namespace (repeatable)",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch the whole cluster (the default when no namespace is set)",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, $KUBECONFIG)")
    parser.add_argument("--worker-image", help="the worker container image")
    parser.add_argument(
        "--http-port", type=int, help="/healthz, /readyz, /metrics (and the relay without TLS)"
    )
    parser.add_argument("--status-url", help="URL workers reach the status relay at")
    parser.add_argument(
        "--no-leader-election",
        action="store_true",
        help="act at once, without the Lease (one replica only)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.namespaces:
        overrides["namespaces"] = args.namespaces
    if args.all_namespaces:
        overrides["namespaces"] = []
    for flag in ("worker_image", "http_port", "status_url"):
        if getattr(args, flag) is not None:
            overrides[flag] = getattr(args, flag)
    if args.no_leader_election:
        overrides["leader_election"] = False
    try:
        settings = settings_mod.OperatorSettings(**overrides)
    except pydantic.ValidationError as exc:
        sys.stderr.write(
            f"avatar-operator: bad settings: {settings_mod.describe_settings_error(exc)}\n"
        )
        return 2
    logs.setup(args.log_level, settings.log_format)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await runner.run(settings, kubeconfig=args.kubeconfig, stop=stop)

    try:
        asyncio.run(run())
    except (launch.ConfigError, relaytls.TLSConfigError) as exc:
        sys.stderr.write(f"avatar-operator: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
