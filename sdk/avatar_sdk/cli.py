"""avatarctl: AvatarSessions from the command line, the way kubectl shows other objects.

    avatarctl create ROOM_ID [--wait]      create the room's session (idempotent)
    avatarctl get [NAME] | list            table: name, room, phase, playback, node, GPU, VRAM, age
    avatarctl describe NAME                everything about one session, conditions and events
    avatarctl wait NAME                    until the worker has joined, with progress
    avatarctl watch [NAME]                 live updates, one row per change
    avatarctl delete NAME...               delete sessions (their Pod and Secret go with them)
    avatarctl capacity [--vram-mib N]      free VRAM per GPU, and how many more sessions fit
    avatarctl pool get [NAME]              warm pools: desired, ready, claimed, starting, age
    avatarctl pool describe NAME           a pool's spec, counts, conditions, workers, events
    avatarctl pool scale NAME --replicas N the idle workers to keep (the scale subresource)

Every command takes `--kubeconfig`, `--context`, `-n/--namespace` and `-o/--output table|json|
yaml|name`. Progress goes to stderr, results to stdout, so `-o json` output stays parseable.

Exit codes (stable: scripts may rely on them):

    0   success
    1   any other error (the API server refused the call, ...)
    2   usage error (bad arguments)
    3   session (or pool) not found
    4   the AvatarSession CRD is not installed (install the chart)
    5   forbidden by RBAC (the message gives the Role rule to add)
    6   the session failed or ended before its worker joined
    7   timed out waiting for the worker to join
    8   timed out while no GPU had room (Unschedulable)
    9   conflict: the session name belongs to another room
    10  the API server cannot be reached, or no Kubernetes configuration was found
    11  the session was deleted while waiting for it
    12  invalid spec (or a pool change the API server refused)
    130 interrupted (Ctrl-C)

`capacity` computes, from Nodes and the sessions' recorded placements, the same figures the
operator's placement engine uses (`avatar_sdk.placement.capacity`); pass the operator's
placement settings (`--placement-config`, the chart's `placement` value) when the chart sets
headroom or per-pool overrides. It lists Nodes and sessions cluster-wide, which takes a
ClusterRole an agent does not need.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

import yaml

from avatar_sdk import api, display, pools
from avatar_sdk import client as avatar_client
from avatar_sdk.objects import Obj

Clock = Callable[[], datetime]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 3
EXIT_NO_CRD: Final = 4
EXIT_FORBIDDEN: Final = 5
EXIT_FAILED: Final = 6
EXIT_TIMEOUT: Final = 7
EXIT_UNSCHEDULABLE: Final = 8
EXIT_CONFLICT: Final = 9
EXIT_UNAVAILABLE: Final = 10
EXIT_DELETED: Final = 11
EXIT_INVALID: Final = 12
EXIT_INTERRUPTED: Final = 130

# Most specific first: Unschedulable is a JoinTimeout.
_EXIT_CODES: Final[tuple[tuple[type[Exception], int], ...]] = (
    (avatar_client.SessionNotFound, EXIT_NOT_FOUND),
    (avatar_client.PoolNotFound, EXIT_NOT_FOUND),
    (avatar_client.InvalidPool, EXIT_INVALID),
    (avatar_client.CRDNotInstalled, EXIT_NO_CRD),
    (avatar_client.PermissionDenied, EXIT_FORBIDDEN),
    (avatar_client.SessionFailed, EXIT_FAILED),
    (avatar_client.Unschedulable, EXIT_UNSCHEDULABLE),
    (avatar_client.JoinTimeout, EXIT_TIMEOUT),
    (avatar_client.SessionConflict, EXIT_CONFLICT),
    (avatar_client.ApiUnavailable, EXIT_UNAVAILABLE),
    (avatar_client.SessionDeleted, EXIT_DELETED),
    (avatar_client.InvalidSession, EXIT_INVALID),
)

KIND_NAME: Final = f"{api.SINGULAR}.{api.GROUP}"  # avatarsession.avatar-operator.dev
POOL_KIND_NAME: Final = f"{pools.POOL_SINGULAR}.{api.GROUP}"  # avatarpool.avatar-operator.dev
POOL_COLUMNS: Final = ("NAME", "DESIRED", "READY", "CLAIMED", "STARTING", "AGE")
WORKER_COLUMNS: Final = ("NAME", "STATE", "SESSION", "PHASE", "NODE", "AGE")
NONE: Final = display.NONE
SESSION_COLUMNS: Final = display.SESSION_COLUMNS


class UsageError(Exception):
    """Arguments that parse but do not make sense; exit code 2."""


# ---------------------------------------------------------------------------------------------
# commands


async def _create(args: argparse.Namespace, sessions: Any, out: TextIO, err: TextIO) -> int:
    session, created = await sessions.ensure(
        args.room_id,
        name=args.name,
        participant_id=args.participant_id,
        agent_participant_id=args.agent_participant_id,
        spec=args.spec,
    )
    obj: Obj | None = None
    if args.wait:
        err.write(f"waiting up to {args.timeout:g}s for {session.name} to join\n")
        joined = await sessions.wait_until_joined(
            session.name,
            args.timeout,
            on_change=display.Progress(err, session.name),
            fail_if_unschedulable=args.fail_if_unschedulable,
        )
        session = joined
    if args.output in ("json", "yaml"):
        obj = await sessions.get_object(session.name)
        out.write(display.dump(obj, args.output))
    elif args.output == "name":
        out.write(f"{KIND_NAME}/{session.name}\n")
    else:
        verb = "created" if created else "unchanged (it exists for this room)"
        if args.wait:
            verb += ", joined"
        out.write(f"{KIND_NAME}/{session.name} {verb}\n")
    return EXIT_OK


def _spec_from_args(args: argparse.Namespace) -> Obj:
    """The spec `create` sends: the -f file's (a manifest or a bare spec), then the flags."""
    spec: Obj = {}
    if args.filename:
        document = _read_yaml(args.filename)
        if document.get("kind"):
            spec = dict(document.get("spec") or {})
            if args.name is None:
                args.name = (document.get("metadata") or {}).get("name")
        else:
            spec = dict(document)
        if spec.get("roomId") not in (None, args.room_id):
            raise UsageError(f"{args.filename}: roomId {spec['roomId']!r} is not {args.room_id!r}")
    for flag, path in (
        ("renderer", ("avatar", "renderer")),
        ("image", ("avatar", "image")),
        ("model_path", ("avatar", "modelPath")),
        ("width", ("video", "width")),
        ("height", ("video", "height")),
        ("fps", ("video", "fps")),
        ("sample_rate", ("audio", "sampleRate")),
        ("vram_mib", ("resources", "vramMiB")),
        ("gpu", ("resources", "gpu")),
        ("join_timeout_seconds", ("lifetime", "joinTimeoutSeconds")),
    ):
        value = getattr(args, flag)
        if value is not None:
            spec.setdefault(path[0], {})[path[1]] = value
    return spec


async def _get(args: argparse.Namespace, sessions: Any, out: TextIO, now: datetime) -> int:
    if args.name:
        items = [await sessions.get_object(args.name)]
    else:
        items, _ = await sessions.list_objects(all_namespaces=args.all_namespaces)
        if args.room:
            items = [i for i in items if (i.get("spec") or {}).get("roomId") == args.room]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
    if args.output in ("json", "yaml"):
        out.write(display.dump(items[0] if args.name else display.as_list(items), args.output))
    elif args.output == "name":
        out.writelines(f"{KIND_NAME}/{i['metadata']['name']}\n" for i in items)
    elif not items:
        where = "any namespace" if args.all_namespaces else f"namespace {sessions.namespace}"
        out.write(f"No avatar sessions found in {where}.\n")
    else:
        out.write(display.sessions_table(items, now, namespace=args.all_namespaces))
    return EXIT_OK


async def _describe(args: argparse.Namespace, sessions: Any, out: TextIO, now: datetime) -> int:
    obj = await sessions.get_object(args.name)
    events: list[Obj] | str
    try:
        events = await sessions.events(args.name, uid=obj["metadata"].get("uid"))
    except avatar_client.PermissionDenied:
        events = "<cannot list events: grant the ServiceAccount `list` on events>"
    if args.output in ("json", "yaml"):
        body = {"session": obj, "events": events if isinstance(events, list) else []}
        out.write(display.dump(body, args.output))
    else:
        out.write(display.describe(obj, events, now))
    return EXIT_OK


async def _wait(args: argparse.Namespace, sessions: Any, out: TextIO, err: TextIO) -> int:
    err.write(f"waiting up to {args.timeout:g}s for {args.name} to join\n")
    session = await sessions.wait_until_joined(
        args.name,
        args.timeout,
        on_change=display.Progress(err, args.name),
        fail_if_unschedulable=args.fail_if_unschedulable,
    )
    if args.output in ("json", "yaml"):
        out.write(display.dump(await sessions.get_object(session.name), args.output))
    elif args.output == "name":
        out.write(f"{KIND_NAME}/{session.name}\n")
    else:
        out.write(f"{KIND_NAME}/{session.name} joined\n")
    return EXIT_OK


async def _watch(args: argparse.Namespace, sessions: Any, out: TextIO, clock: Clock) -> int:
    header_done = False

    async def follow() -> None:
        nonlocal header_done
        async for event in sessions.watch(args.name, all_namespaces=args.all_namespaces):
            if args.output == "json":
                out.write(json.dumps({"type": event.type, "object": event.object}) + "\n")
            elif args.output == "yaml":
                document = {"type": event.type, "object": event.object}
                out.write("---\n" + str(yaml.safe_dump(document, sort_keys=False)))
            elif args.output == "name":
                out.write(f"{event.type} {KIND_NAME}/{event.name}\n")
            else:
                row = display.session_row(event.object, clock(), namespace=args.all_namespaces)
                if event.type == avatar_client.DELETED:
                    row[SESSION_COLUMNS.index("PHASE") + int(args.all_namespaces)] = "Deleted"
                if not header_done:
                    header = list(SESSION_COLUMNS)
                    if args.all_namespaces:
                        header.insert(0, "NAMESPACE")
                    out.write(display.table([header, row]))
                    header_done = True
                else:
                    out.write(display.table([row]))
            out.flush()

    if args.timeout is None:
        await follow()
    else:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.timeout):
                await follow()
    return EXIT_OK


async def _delete(args: argparse.Namespace, sessions: Any, out: TextIO, err: TextIO) -> int:
    missing = []
    for name in args.names:
        if await sessions.delete(name, wait=args.wait, timeout=args.timeout):
            out.write(f'{KIND_NAME} "{name}" deleted\n')
        elif args.ignore_not_found:
            continue
        else:
            missing.append(name)
            err.write(f'error: {KIND_NAME} "{name}" not found in namespace {sessions.namespace}\n')
    return EXIT_NOT_FOUND if missing else EXIT_OK


async def _capacity(args: argparse.Namespace, sessions: Any, out: TextIO) -> int:
    # The operator's own, pure placement code: the same figures as its engine.
    from avatar_sdk.placement import capacity, engine, inventory, ledger

    settings = engine.Settings()
    if args.placement_config:
        try:
            settings = engine.Settings.model_validate(args.placement)
        except ValueError as exc:
            raise UsageError(f"{args.placement_config}: not placement settings: {exc}") from exc
    requests = {
        "worker_cpu": settings.inventory.worker_cpu or args.worker_cpu,
        "worker_memory": settings.inventory.worker_memory or args.worker_memory,
    }
    for flag, value in (("--worker-cpu", args.worker_cpu), ("--worker-memory", args.worker_memory)):
        if inventory.quantity(value) is None:
            raise UsageError(f"{flag} {value!r}: not a Kubernetes quantity (e.g. 500m, 2, 4Gi)")
    node_settings = settings.inventory.model_copy(update=requests)
    nodes = [inventory.parse_node(n, node_settings) for n in await sessions.list_nodes()]
    items, _ = await sessions.list_objects(all_namespaces=True)
    records = [
        ledger.SessionRecord(
            f"{o['metadata'].get('namespace')}/{o['metadata']['name']}",
            api.parse_status(o.get("status")),
        )
        for o in items
    ]
    book, _ = ledger.Ledger.rebuild(records)
    view = capacity.compute(nodes, book, args.vram_mib, exclusive=args.exclusive)
    if args.output in ("json", "yaml"):
        body = {
            "vramMiB": view.vram_mib,
            "exclusive": view.exclusive,
            "fits": view.fits,
            "freeMiB": view.free_mib,
            "largestFreeMiB": view.largest_free_mib,
            "gpus": [
                {
                    "node": g.node,
                    "gpu": g.gpu,
                    "product": g.product,
                    "vramMiB": g.vram_mib,
                    "capacityMiB": g.capacity_mib,
                    "reservedMiB": g.reserved_mib,
                    "freeMiB": g.free_mib,
                    "sessions": g.sessions,
                    "exclusive": g.exclusive,
                    "available": g.available,
                    "fits": g.fits,
                }
                for g in view.gpus
            ],
        }
        out.write(display.dump(body, args.output))
        return EXIT_OK
    by_name = {n.name: n for n in nodes}
    rows = [["NODE", "GPU", "PRODUCT", "VRAM", "RESERVED", "FREE", "SESSIONS", "FITS", "STATUS"]]
    for g in view.gpus:
        node = by_name[g.node]
        state = (
            "Cordoned"
            if not node.schedulable
            else "NotReady"
            if not node.ready
            else "Exclusive"
            if g.exclusive
            else "Ready"
        )
        rows.append(
            [
                g.node,
                str(g.gpu),
                g.product or NONE,
                f"{g.vram_mib}Mi",
                f"{g.reserved_mib}Mi",
                f"{g.free_mib}Mi",
                str(g.sessions),
                str(g.fits),
                state,
            ]
        )
    if len(rows) == 1:
        out.write("No GPUs found: no node carries GPU Feature Discovery labels.\n")
    else:
        out.write(display.table(rows))
    size = f"{view.vram_mib} MiB" + (" (a whole GPU)" if view.exclusive else "")
    out.write(
        f"{view.fits} more session{'s' if view.fits != 1 else ''} of {size} fit; "
        f"free {view.free_mib} MiB in all, largest free block {view.largest_free_mib} MiB "
        "on one GPU\n"
    )
    return EXIT_OK


# --- pools ------------------------------------------------------------------------------------


def pool_row(obj: Obj, now: datetime, *, namespace: bool = False) -> list[str]:
    pool = avatar_client.parse_pool(obj)
    status = pool.status
    row = [
        pool.name,
        str(pool.spec.replicas),
        str(status.ready_replicas),
        str(status.claimed),
        str(status.starting),
        display._age(pool.metadata.get("creationTimestamp"), now),
    ]
    return [pool.namespace, *row] if namespace else row


def pools_table(objs: Sequence[Obj], now: datetime, *, namespace: bool = False) -> str:
    header = ["NAMESPACE", *POOL_COLUMNS] if namespace else list(POOL_COLUMNS)
    return display.table([header, *(pool_row(o, now, namespace=namespace) for o in objs)])


def _toleration(t: api.Toleration) -> str:
    text = t.key or "<all>"
    if t.operator == "Equal":
        text += f"={t.value or ''}"
    else:
        text += " (Exists)"
    if t.effect:
        text += f":{t.effect}"
    if t.toleration_seconds is not None:
        text += f" for {t.toleration_seconds}s"
    return text


def _worker_rows(workers: list[Obj], now: datetime) -> list[list[str]]:
    rows = [list(WORKER_COLUMNS)]
    for pod in workers:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        state = labels.get(pools.POOL_STATE_LABEL) or NONE
        session = (
            labels.get(pools.SESSION_LABEL) if state == pools.PoolWorkerState.CLAIMED else None
        )
        rows.append(
            [
                str(meta.get("name", "")),
                state,
                session or NONE,
                str((pod.get("status") or {}).get("phase") or NONE),
                str((pod.get("spec") or {}).get("nodeName") or NONE),
                display._age(meta.get("creationTimestamp"), now),
            ]
        )
    return rows


def describe_pool(
    obj: Obj, workers: list[Obj] | str, events: list[Obj] | str, now: datetime
) -> str:
    """kubectl-describe-like text for one pool; `workers` and `events` are lists or why there
    are none."""
    pool = avatar_client.parse_pool(obj)
    spec, status, meta = pool.spec, pool.status, pool.metadata
    template = spec.template
    created = meta.get("creationTimestamp")
    node_selector = ",".join(f"{k}={v}" for k, v in sorted(template.node_selector.items()))
    lines: list[tuple[str, str]] = [
        ("Name", pool.name),
        ("Namespace", pool.namespace),
        ("Created", f"{created or NONE} ({display._age(created, now)} ago)"),
        ("Replicas", f"{spec.replicas} desired"),
        (
            "Workers",
            f"{status.ready_replicas} ready, {status.starting} starting, "
            f"{status.claimed} claimed ({status.replicas} idle)",
        ),
        ("When Empty", spec.when_empty.value),
        (
            "Avatar",
            f"{template.avatar.renderer.value}, {template.video.width}x{template.video.height} "
            f"@ {template.video.fps} fps, audio {template.audio.sample_rate} Hz "
            f"{'mono' if template.audio.channels == 1 else 'stereo'}",
        ),
        (
            "Resources",
            f"{template.resources.effective_vram_mib} MiB VRAM, GPU {template.resources.gpu.value}",
        ),
        ("Node Selector", node_selector or NONE),
        ("Tolerations", ", ".join(_toleration(t) for t in template.tolerations) or NONE),
        ("Selector", status.selector or NONE),
        (
            "Observed Gen",
            f"{status.observed_generation} (spec generation {meta.get('generation', NONE)})"
            if status.observed_generation is not None
            else NONE,
        ),
    ]
    workers_rows = workers if isinstance(workers, str) else _worker_rows(workers, now)
    return (
        "\n".join(
            [
                *display.fields(lines),
                *display.section("Conditions:", display.condition_rows(status.conditions, now)),
                *display.section("Worker Pods:", workers_rows),
                *display.section("Events:", display.event_rows(events, now)),
            ]
        )
        + "\n"
    )


async def _pool_get(args: argparse.Namespace, sessions: Any, out: TextIO, now: datetime) -> int:
    if args.name:
        items = [await sessions.get_pool_object(args.name)]
    else:
        items = await sessions.list_pool_objects(all_namespaces=args.all_namespaces)
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
    if args.output in ("json", "yaml"):
        out.write(display.dump(items[0] if args.name else display.as_list(items), args.output))
    elif args.output == "name":
        out.writelines(f"{POOL_KIND_NAME}/{i['metadata']['name']}\n" for i in items)
    elif not items:
        where = "any namespace" if args.all_namespaces else f"namespace {sessions.namespace}"
        out.write(f"No avatar pools found in {where}.\n")
    else:
        out.write(pools_table(items, now, namespace=args.all_namespaces))
    return EXIT_OK


async def _pool_describe(
    args: argparse.Namespace, sessions: Any, out: TextIO, now: datetime
) -> int:
    obj = await sessions.get_pool_object(args.name)
    workers: list[Obj] | str
    try:
        workers = await sessions.pool_workers(args.name)
    except avatar_client.PermissionDenied:
        workers = "<cannot list pods: grant the ServiceAccount `list` on pods>"
    events: list[Obj] | str
    try:
        events = await sessions.events(
            args.name, uid=obj["metadata"].get("uid"), kind=pools.POOL_KIND
        )
    except avatar_client.PermissionDenied:
        events = "<cannot list events: grant the ServiceAccount `list` on events>"
    if args.output in ("json", "yaml"):
        body = {
            "pool": obj,
            "workers": workers if isinstance(workers, list) else [],
            "events": events if isinstance(events, list) else [],
        }
        out.write(display.dump(body, args.output))
    elif args.output == "name":
        out.write(f"{POOL_KIND_NAME}/{args.name}\n")
    else:
        out.write(describe_pool(obj, workers, events, now))
    return EXIT_OK


async def _pool_scale(args: argparse.Namespace, sessions: Any, out: TextIO) -> int:
    scale = await sessions.scale_pool(args.name, args.replicas)
    if args.output in ("json", "yaml"):
        out.write(display.dump(scale, args.output))
    elif args.output == "name":
        out.write(f"{POOL_KIND_NAME}/{args.name}\n")
    else:
        out.write(f"{POOL_KIND_NAME}/{args.name} scaled to {args.replicas}\n")
    return EXIT_OK


def _read_yaml(path: str) -> Obj:
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise UsageError(f"{path}: expected a mapping")
    return document


# ---------------------------------------------------------------------------------------------
# arguments


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return number


def _replicas(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {value!r}") from None
    if not 0 <= number <= pools.MAX_REPLICAS:
        raise argparse.ArgumentTypeError(f"must be between 0 and {pools.MAX_REPLICAS}, got {value}")
    return number


def _common_options(*, suppress: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name. The subcommands' copies
    default to SUPPRESS so that they never overwrite what was given before the command (each
    copy has actions of its own: parents share theirs, and set_defaults changes them)."""
    common = argparse.ArgumentParser(add_help=False)

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    common.add_argument("--kubeconfig", default=default(None), help="kubeconfig file")
    common.add_argument("--context", default=default(None), help="kubeconfig context")
    common.add_argument(
        "-n", "--namespace", default=default(None), help="namespace (default: the context's)"
    )
    common.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml", "name"),
        default=default("table"),
        help="output format (default: table)",
    )
    return common


def parser() -> argparse.ArgumentParser:
    common = _common_options(suppress=True)
    main = argparse.ArgumentParser(
        prog="avatarctl",
        description="Manage AvatarSessions (avatar-operator.dev).",
        epilog="Exit codes" + __doc__.split("Exit codes", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common_options(suppress=False)],
    )
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    create = commands.add_parser(
        "create", parents=[common], help="create the room's session (idempotent)"
    )
    create.add_argument("room_id", metavar="ROOM_ID")
    create.add_argument("--name", help="session name (default: derived from the room)")
    create.add_argument("--participant-id", help="the avatar's participant id")
    create.add_argument("--agent-participant-id", help="the only participant the avatar hears")
    create.add_argument("-f", "--filename", help="YAML: an AvatarSession manifest or a spec")
    create.add_argument("--renderer", choices=[r.value for r in api.Renderer])
    create.add_argument("--image", help="reference portrait path in the worker")
    create.add_argument("--model-path", help="model path for the model renderer")
    create.add_argument("--width", type=int)
    create.add_argument("--height", type=int)
    create.add_argument("--fps", type=int)
    create.add_argument("--sample-rate", type=int, choices=api.SUPPORTED_SAMPLE_RATES)
    create.add_argument("--vram-mib", type=int, help="VRAM to reserve in MiB")
    create.add_argument("--gpu", choices=[g.value for g in api.GpuMode])
    create.add_argument("--join-timeout-seconds", type=int)
    create.add_argument("--wait", action="store_true", help="wait until the worker has joined")
    create.add_argument("--timeout", type=_positive, default=120.0, help="for --wait (seconds)")
    create.add_argument(
        "--fail-if-unschedulable", action="store_true", help="with --wait: fail when no GPU fits"
    )

    for name, text in (("get", "show sessions"), ("list", "show all sessions")):
        get = commands.add_parser(name, parents=[common], help=text)
        if name == "get":
            get.add_argument("name", nargs="?", metavar="NAME")
        else:
            get.set_defaults(name=None)
        get.add_argument("-A", "--all-namespaces", action="store_true")
        get.add_argument("--room", help="only the session(s) of this room")

    desc = commands.add_parser("describe", parents=[common], help="one session in detail")
    desc.add_argument("name", metavar="NAME")

    wait = commands.add_parser("wait", parents=[common], help="wait until the worker has joined")
    wait.add_argument("name", metavar="NAME")
    wait.add_argument("--timeout", type=_positive, default=120.0, help="seconds")
    wait.add_argument(
        "--fail-if-unschedulable", action="store_true", help="fail at once when no GPU has room"
    )

    watch = commands.add_parser("watch", parents=[common], help="live updates")
    watch.add_argument("name", nargs="?", metavar="NAME")
    watch.add_argument("-A", "--all-namespaces", action="store_true")
    watch.add_argument("--timeout", type=_positive, help="stop after this many seconds")

    delete = commands.add_parser("delete", parents=[common], help="delete sessions")
    delete.add_argument("names", nargs="+", metavar="NAME")
    delete.add_argument("--wait", action="store_true", help="until the objects are gone")
    delete.add_argument("--timeout", type=_positive, default=60.0, help="for --wait (seconds)")
    delete.add_argument("--ignore-not-found", action="store_true")

    cap = commands.add_parser("capacity", parents=[common], help="free VRAM and what fits")
    cap.add_argument("--vram-mib", type=int, default=api.DEFAULT_VRAM_MIB, help="session size")
    cap.add_argument("--exclusive", action="store_true", help="sessions that take a whole GPU")
    cap.add_argument("--placement-config", help="the operator's placement settings (JSON or YAML)")
    cap.add_argument(
        "--worker-cpu",
        default="1",
        help="a worker Pod's CPU request (the chart's worker.resources.requests.cpu): a node "
        "fits no more sessions than its allocatable CPU holds workers",
    )
    cap.add_argument(
        "--worker-memory", default="2Gi", help="a worker Pod's memory request, likewise"
    )

    pool = commands.add_parser(
        "pool", parents=[common], help="warm pools (AvatarPool): get, describe, scale"
    )
    pool_commands = pool.add_subparsers(dest="pool_command", required=True, metavar="COMMAND")
    pool_get = pool_commands.add_parser("get", parents=[common], help="show pools")
    pool_get.add_argument("name", nargs="?", metavar="NAME")
    pool_get.add_argument("-A", "--all-namespaces", action="store_true")
    pool_desc = pool_commands.add_parser(
        "describe", parents=[common], help="one pool: spec, counts, workers, events"
    )
    pool_desc.add_argument("name", metavar="NAME")
    pool_scale = pool_commands.add_parser(
        "scale", parents=[common], help="set the idle workers the pool keeps"
    )
    pool_scale.add_argument("name", metavar="NAME")
    pool_scale.add_argument(
        "--replicas",
        type=_replicas,
        required=True,
        help=f"idle, ready workers to keep (0 to {pools.MAX_REPLICAS})",
    )
    return main


async def _run(args: argparse.Namespace, out: TextIO, err: TextIO, clock: Clock) -> int:
    sessions = await avatar_client.AvatarSessionClient.from_config(
        args.namespace, kubeconfig=args.kubeconfig, context=args.context
    )
    async with sessions:
        if args.command == "create":
            return await _create(args, sessions, out, err)
        if args.command in ("get", "list"):
            return await _get(args, sessions, out, clock())
        if args.command == "describe":
            return await _describe(args, sessions, out, clock())
        if args.command == "wait":
            return await _wait(args, sessions, out, err)
        if args.command == "watch":
            return await _watch(args, sessions, out, clock)
        if args.command == "delete":
            return await _delete(args, sessions, out, err)
        if args.command == "capacity":
            return await _capacity(args, sessions, out)
        if args.command == "pool":
            if args.pool_command == "get":
                return await _pool_get(args, sessions, out, clock())
            if args.pool_command == "describe":
                return await _pool_describe(args, sessions, out, clock())
            if args.pool_command == "scale":
                return await _pool_scale(args, sessions, out)
    raise UsageError(f"unknown command {args.command}")


def run(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    clock: Clock | None = None,
) -> int:
    """avatarctl with `argv`; returns the exit code (see the module docstring)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        # files are read here, before the loop runs: nothing blocks it later
        if args.command == "create":
            args.spec = _spec_from_args(args)
        if args.command == "capacity" and args.placement_config:
            args.placement = _read_yaml(args.placement_config)
        return asyncio.run(_run(args, out, err, clock or (lambda: datetime.now(UTC))))
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return EXIT_INTERRUPTED
    except UsageError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_USAGE
    except avatar_client.AvatarError as exc:
        err.write(f"error: {exc}\n")
        return next((code for kind, code in _EXIT_CODES if isinstance(exc, kind)), EXIT_ERROR)


def main() -> None:
    """The `avatarctl` console script."""
    try:
        code = run()
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`avatarctl capacity | head`): stop quietly, as kubectl does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
