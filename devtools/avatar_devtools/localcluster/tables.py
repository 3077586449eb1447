"""`meta.k8s.io/v1` Tables: what `kubectl get` prints, rendered by the server as the real one does.

kubectl asks for `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` and prints the
columns it gets (those with `priority` > 0 only with `-o wide`). Columns and cells follow the
real server's printers:

- custom resources: NAME, then the version's `additionalPrinterColumns` (AGE alone when it has
  none), each cell the column's JSONPath evaluated on the object: `string` columns as the
  JSONPath printer prints the value, `integer`/`number`/`boolean` as JSON of that type (another
  type: an empty cell), `date` as an age (`5m3s`), a missing value as an empty cell;
- events: LAST SEEN TYPE REASON OBJECT MESSAGE; deployments: NAME READY UP-TO-DATE AVAILABLE
  AGE; role bindings: NAME ROLE AGE (wide: their subjects);
- nodes: NAME STATUS ROLES AGE VERSION, wide INTERNAL-IP EXTERNAL-IP OS-IMAGE KERNEL-VERSION
  CONTAINER-RUNTIME; pods: NAME READY STATUS RESTARTS AGE, wide IP NODE NOMINATED NODE
  READINESS GATES; namespaces: NAME STATUS AGE; secrets: NAME TYPE DATA AGE; configmaps: NAME
  DATA AGE; serviceaccounts: NAME AGE; leases: NAME HOLDER AGE; CRDs: NAME SCOPE VERSIONS
  CREATED AT, wide GROUP KIND SHORTNAMES ESTABLISHED;
- any other built-in kind: NAME and CREATED AT (the real server's default for a kind without
  a printer; the real one has a printer for every built-in kind).

Each row carries its object as `PartialObjectMetadata` (`includeObject=Metadata`, the default),
whole (`Object`) or not at all (`None`).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from avatar_devtools.localcluster import errors

logger = logging.getLogger(__name__)

TABLE_MEDIA = "application/json;as=Table;v=v1;g=meta.k8s.io"
_NAME_DOC = (
    "Name must be unique within a namespace. Is required when creating resources, although some "
    "resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
_AGE_DOC = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. "
    "It is not guaranteed to be set in happens-before order across separate operations. Clients "
    "may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by "
    "the system. Read-only. Null for lists. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)
Column = dict[str, Any]
Cells = Callable[[dict[str, Any]], list[Any]]
INCLUDE_OBJECT = ("Metadata", "Object", "None")


def wants_table(accept: str | None) -> bool:
    """Whether an Accept header asks for a meta.k8s.io Table first (kubectl get does)."""
    if not accept:
        return False
    for option in accept.split(","):
        params = {
            k.strip(): v.strip()
            for part in option.split(";")[1:]
            if "=" in part
            for k, v in [part.split("=", 1)]
        }
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
            return params.get("v") in ("v1", "v1beta1")
        if option.split(";")[0].strip() in ("application/json", "*/*"):
            return False
    return False


def table_version(accept: str) -> str:
    for option in accept.split(","):
        if "as=Table" in option and "g=meta.k8s.io" in option:
            return "v1beta1" if "v=v1beta1" in option else "v1"
    return "v1"


# --- ages -----------------------------------------------------------------------------------


def _parse_time(value: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """apimachinery's `duration.HumanDuration`: `42s`, `5m3s`, `3h10m`, `2d4h`, ..."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        years = hours // 24 // 365
        return f"{years}y" if days == 0 else f"{years}y{days}d"
    return f"{hours // 24 // 365}y"


def age(timestamp: Any, now: datetime.datetime | None = None) -> str:
    if not isinstance(timestamp, str) or not timestamp:
        return "<unknown>"
    when = _parse_time(timestamp)
    if when is None:
        return "<invalid>"
    current = now or datetime.datetime.now(datetime.UTC)
    return human_duration((current - when).total_seconds())


# --- JSONPath (the subset printer columns use) -----------------------------------------------

_SEGMENT = re.compile(
    r"""\.(?P<name>[A-Za-z0-9_\-/]+)"""
    r"""|\[(?P<index>-?\d+)\]"""
    r"""|\[['"](?P<quoted>[^'"]+)['"]\]"""
    r"""|\[\?\(@\.(?P<fkey>[A-Za-z0-9_.\-]+)\s*==\s*['"](?P<fvalue>[^'"]*)['"]\)\]"""
    r"""|\[\*\]|\.\*(?P<star>)"""
)


class JsonPath:
    """A column's JSONPath (`.status.phase`, `.spec.items[0].name`, `.a[?(@.type=="Ready")].s`,
    `.x[*].y`): the first value found, as kube-apiserver's printer uses the first result."""

    def __init__(self, expression: str) -> None:
        text = expression.strip()
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1]
        if text.startswith("$"):
            text = text[1:]
        self.steps: list[tuple[str, Any]] = []
        position = 0
        while position < len(text):
            match = _SEGMENT.match(text, position)
            if match is None:
                raise ValueError(f"unrecognized column definition {expression!r}")
            if match.group("name") is not None:
                self.steps.append(("key", match.group("name")))
            elif match.group("index") is not None:
                self.steps.append(("index", int(match.group("index"))))
            elif match.group("quoted") is not None:
                self.steps.append(("key", match.group("quoted")))
            elif match.group("fkey") is not None:
                self.steps.append(("filter", (match.group("fkey"), match.group("fvalue"))))
            else:
                self.steps.append(("all", None))
            position = match.end()

    def find(self, obj: Any) -> list[Any]:
        current = [obj]
        for kind, arg in self.steps:
            found: list[Any] = []
            for value in current:
                keyed = kind == "key" and isinstance(value, dict) and arg in value
                if keyed or (
                    kind == "index" and isinstance(value, list) and -len(value) <= arg < len(value)
                ):
                    found.append(value[arg])
                elif kind == "all" and isinstance(value, list):
                    found.extend(value)
                elif kind == "all" and isinstance(value, dict):
                    found.extend(value.values())
                elif kind == "filter" and isinstance(value, list):
                    key, wanted = arg
                    for item in value:
                        got = _dig(item, key.split("."))
                        if got is not None and _text(got) == wanted:
                            found.append(item)
            current = found
        return current


def _dig(value: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _text(value: Any) -> str:
    """A value as client-go's JSONPath printer prints it (strings bare, the rest as JSON)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e21 else json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _cell(column_type: str, value: Any) -> Any:
    """`cellForJSONValue`: a JSON value of the column's type, or None."""
    if value is None:
        return None
    if column_type == "string":
        return _text(value)
    if column_type == "integer" and isinstance(value, int | float) and type(value) is not bool:
        return int(value)
    if column_type == "number" and isinstance(value, int | float) and type(value) is not bool:
        return float(value)
    if column_type == "boolean" and type(value) is bool:
        return value
    if column_type == "date" and isinstance(value, str):
        return age(value) if _parse_time(value) else "<invalid>"
    return None


# --- printers -------------------------------------------------------------------------------


def _name_column() -> Column:
    return {"name": "Name", "type": "string", "format": "name", "description": _NAME_DOC}


def _column(name: str, description: str = "", priority: int = 0) -> Column:
    return {
        "name": name,
        "type": "string",
        "format": "",
        "description": description,
        "priority": priority,
    }


class Printer:
    """The columns of one resource and how to fill a row."""

    def __init__(self, columns: list[Column], cells: Cells) -> None:
        self.columns = columns
        self.cells = cells


def custom_printer(version: dict[str, Any]) -> Printer:
    """A CRD version's printer: NAME and its `additionalPrinterColumns` (or AGE)."""
    definitions = version.get("additionalPrinterColumns") or [
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    ]
    columns = [_name_column()]
    paths: list[tuple[str, JsonPath]] = []
    for definition in definitions:
        path = definition["jsonPath"]
        columns.append(
            {
                "name": definition["name"],
                "type": definition.get("type", "string"),
                "format": definition.get("format", ""),
                "description": definition.get("description")
                or f"Custom resource definition column (in JSONPath format): {path}",
                "priority": int(definition.get("priority") or 0),
            }
        )
        try:
            paths.append((definition.get("type", "string"), JsonPath(path)))
        except ValueError:
            logger.warning("printer column not understood", extra={"jsonPath": path})
            paths.append((definition.get("type", "string"), JsonPath("")))

    def cells(obj: dict[str, Any]) -> list[Any]:
        row: list[Any] = [obj["metadata"].get("name", "")]
        for column_type, path in paths:
            found = path.find(obj)
            row.append(_cell(column_type, found[0]) if found else None)
        return row

    return Printer(columns, cells)


def _node_cells(node: dict[str, Any]) -> list[Any]:
    meta, spec, status = node["metadata"], node.get("spec") or {}, node.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    states = (
        ["Unknown"] if ready is None else ["Ready" if ready["status"] == "True" else "NotReady"]
    )
    if spec.get("unschedulable"):
        states.append("SchedulingDisabled")
    roles = set()
    for key, value in (meta.get("labels") or {}).items():
        if key.startswith("node-role.kubernetes.io/") and key.removeprefix(
            "node-role.kubernetes.io/"
        ):
            roles.add(key.removeprefix("node-role.kubernetes.io/"))
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    info = status.get("nodeInfo") or {}
    addresses = status.get("addresses") or []

    def address(kind: str) -> str:
        return next((a["address"] for a in addresses if a.get("type") == kind), "<none>")

    kernel = info.get("kernelVersion") or "<unknown>"
    if info.get("architecture"):
        kernel += f" ({info['architecture']})"
    return [
        meta.get("name", ""),
        ",".join(states),
        ",".join(sorted(roles)) or "<none>",
        age(meta.get("creationTimestamp")),
        info.get("kubeletVersion", ""),
        address("InternalIP"),
        address("ExternalIP"),
        info.get("osImage") or "<unknown>",
        kernel,
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


NODES = Printer(
    [
        _name_column(),
        _column("Status", "The status of the node"),
        _column("Roles", "The roles of the node"),
        _column("Age", _AGE_DOC),
        _column("Version", "Kubelet Version reported by the node."),
        _column("Internal-IP", "List of addresses reachable to the node.", 1),
        _column("External-IP", "List of addresses reachable to the node.", 1),
        _column("OS-Image", "OS Image reported by the node from /etc/os-release.", 1),
        _column("Kernel-Version", "Kernel Version reported by the node.", 1),
        _column("Container-Runtime", "ContainerRuntime Version reported by the node.", 1),
    ],
    _node_cells,
)


def _pod_cells(pod: dict[str, Any]) -> list[Any]:
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    phase = status.get("phase") or ""
    reason = status.get("reason") or phase
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "SchedulingGated":
            reason = "SchedulingGated"
    restarts = 0
    last_restart = ""
    containers = spec.get("containers") or []
    init_specs = {c.get("name"): c for c in spec.get("initContainers") or []}
    sidecars = {n for n, c in init_specs.items() if c.get("restartPolicy") == "Always"}
    total = len(containers) + len(sidecars)
    ready = 0
    initializing = False
    init_statuses = status.get("initContainerStatuses") or []
    sidecar_restarts, sidecar_last = 0, ""
    for index, container in enumerate(init_statuses):
        restarts += int(container.get("restartCount") or 0)
        finished = ((container.get("lastState") or {}).get("terminated") or {}).get("finishedAt")
        if finished and finished > last_restart:
            last_restart = finished
        sidecar = container.get("name") in sidecars
        if sidecar:
            sidecar_restarts += int(container.get("restartCount") or 0)
            if finished and finished > sidecar_last:
                sidecar_last = finished
        state = container.get("state") or {}
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if terminated is not None and terminated.get("exitCode") == 0:
            continue
        if sidecar and container.get("started"):
            ready += 1 if container.get("ready") else 0
            continue
        if terminated is not None:
            if terminated.get("reason"):
                reason = "Init:" + terminated["reason"]
            elif terminated.get("signal"):
                reason = f"Init:Signal:{terminated['signal']}"
            else:
                reason = f"Init:ExitCode:{terminated.get('exitCode', 0)}"
        elif waiting is not None and waiting.get("reason") not in (None, "", "PodInitializing"):
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{index}/{len(init_specs)}"
        initializing = True
        break
    initialized = any(
        c.get("type") == "Initialized" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    if not initializing or initialized:
        restarts, last_restart = sidecar_restarts, sidecar_last
        running, error_reason = False, ""
        for container in reversed(status.get("containerStatuses") or []):
            restarts += int(container.get("restartCount") or 0)
            finished = ((container.get("lastState") or {}).get("terminated") or {}).get(
                "finishedAt"
            )
            if finished and finished > last_restart:
                last_restart = finished
            state = container.get("state") or {}
            waiting, terminated = state.get("waiting"), state.get("terminated")
            if waiting is not None and waiting.get("reason"):
                reason = waiting["reason"]
            elif terminated is not None:
                if terminated.get("reason"):
                    reason = terminated["reason"]
                elif terminated.get("signal"):
                    reason = f"Signal:{terminated['signal']}"
                else:
                    reason = f"ExitCode:{terminated.get('exitCode', 0)}"
                if terminated.get("exitCode"):
                    error_reason = reason
            elif container.get("ready") and state.get("running") is not None:
                running = True
                ready += 1
        if reason == "Completed":
            pod_ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or []
            )
            if running and pod_ready:
                reason = "Running"
            elif error_reason:
                reason = error_reason
            elif running:
                reason = "NotReady"
    if meta.get("deletionTimestamp"):
        if status.get("reason") == "NodeLost":
            reason = "Unknown"
        elif phase not in ("Succeeded", "Failed"):
            reason = "Terminating"
    restarts_text = str(restarts)
    if restarts and last_restart:
        restarts_text = f"{restarts} ({age(last_restart)} ago)"
    ips = status.get("podIPs") or []
    gates = spec.get("readinessGates") or []
    gates_text = "<none>"
    if gates:
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        true = sum(1 for g in gates if conditions.get(g.get("conditionType")) == "True")
        gates_text = f"{true}/{len(gates)}"
    return [
        meta.get("name", ""),
        f"{ready}/{total}",
        reason,
        restarts_text,
        age(meta.get("creationTimestamp")),
        (ips[0].get("ip") if ips else "") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        gates_text,
    ]


PODS = Printer(
    [
        _name_column(),
        _column("Ready", "The aggregate readiness state of this pod for accepting traffic."),
        _column("Status", "The aggregate status of the containers in this pod."),
        _column(
            "Restarts",
            "The number of times the containers in this pod have been restarted and when the "
            "last container in this pod has restarted.",
        ),
        _column("Age", _AGE_DOC),
        _column("IP", "podIP address allocated to the pod.", 1),
        _column("Node", "NodeName indicates in which node this pod is scheduled.", 1),
        _column("Nominated Node", "nominatedNodeName is set only when this pod preempts.", 1),
        _column("Readiness Gates", "If specified, all readiness gates will be evaluated.", 1),
    ],
    _pod_cells,
)


def _simple(columns: list[tuple[str, str]], cells: Cells) -> Printer:
    return Printer([_name_column(), *(_column(n, d) for n, d in columns)], cells)


def _created(obj: dict[str, Any]) -> str:
    return age(obj["metadata"].get("creationTimestamp"))


BUILTIN_PRINTERS: dict[tuple[str, str], Printer] = {
    ("", "nodes"): NODES,
    ("", "pods"): PODS,
    ("", "namespaces"): _simple(
        [("Status", "The status of the namespace"), ("Age", _AGE_DOC)],
        lambda o: [
            o["metadata"]["name"],
            (o.get("status") or {}).get("phase", ""),
            _created(o),
        ],
    ),
    ("", "secrets"): _simple(
        [
            ("Type", "Used to facilitate programmatic handling of secret data."),
            ("Data", ""),
            ("Age", _AGE_DOC),
        ],
        lambda o: [
            o["metadata"]["name"],
            o.get("type", "Opaque"),
            len(o.get("data") or {}),
            _created(o),
        ],
    ),
    ("", "configmaps"): _simple(
        [("Data", ""), ("Age", _AGE_DOC)],
        lambda o: [
            o["metadata"]["name"],
            len(o.get("data") or {}) + len(o.get("binaryData") or {}),
            _created(o),
        ],
    ),
    ("", "serviceaccounts"): _simple(
        [("Age", _AGE_DOC)], lambda o: [o["metadata"]["name"], _created(o)]
    ),
    ("coordination.k8s.io", "leases"): _simple(
        [
            ("Holder", "holderIdentity contains the identity of the holder of a current lease."),
            ("Age", _AGE_DOC),
        ],
        lambda o: [
            o["metadata"]["name"],
            (o.get("spec") or {}).get("holderIdentity", ""),
            _created(o),
        ],
    ),
}


def _event_cells(event: dict[str, Any]) -> list[Any]:
    first = event.get("firstTimestamp")
    first_seen = age(first) if first else age(event.get("eventTime"))
    last = event.get("lastTimestamp")
    last_seen = age(last) if last else first_seen
    count = event.get("count") or 1
    series = event.get("series")
    if series:
        last_seen = age(series.get("lastObservedTime"))
        count = series.get("count") or count
    involved = event.get("involvedObject") or {}
    kind = str(involved.get("kind", "")).lower()
    target = f"{kind}/{involved['name']}" if involved.get("name") else kind
    source = event.get("source") or {}
    component = source.get("component") or event.get("reportingComponent") or ""
    host = source.get("host") or event.get("reportingInstance") or ""
    return [
        last_seen,
        event.get("type", ""),
        event.get("reason", ""),
        target,
        involved.get("fieldPath", ""),
        f"{component}, {host}" if host else component,
        str(event.get("message", "")).strip(),
        first_seen,
        int(count),
        event["metadata"].get("name", ""),
    ]


EVENTS = Printer(
    [
        _column(
            "Last Seen", "The time at which the most recent occurrence of this event was recorded."
        ),
        _column(
            "Type", "Type of this event (Normal, Warning), new types could be added in the future"
        ),
        _column(
            "Reason",
            "This should be a short, machine understandable string that gives the reason for "
            "the transition into the object's current status.",
        ),
        _column("Object", "The object that this event is about."),
        _column("Subobject", "", 1),
        _column(
            "Source",
            "The component reporting this event. Should be a short machine understandable string.",
            1,
        ),
        _column("Message", "A human-readable description of the status of this operation."),
        _column(
            "First Seen",
            "The time at which the event was first recorded. (Time of server receipt is in "
            "TypeMeta.)",
            1,
        ),
        _column("Count", "The number of times this event has occurred.", 1),
        {**_name_column(), "priority": 1},
    ],
    _event_cells,
)


def _selector_text(selector: dict[str, Any] | None) -> str:
    """A label selector as `metav1.LabelSelectorAsSelector(...).String()` prints it."""
    if not selector:
        return ""
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key", ""), expression.get("operator", "")
        values = ",".join(sorted(expression.get("values") or []))
        parts.append(
            {
                "In": f"{key} in ({values})",
                "NotIn": f"{key} notin ({values})",
                "Exists": key,
                "DoesNotExist": f"!{key}",
            }.get(operator, f"{key} {operator}")
        )
    return ",".join(sorted(parts))


def _deployment_cells(deployment: dict[str, Any]) -> list[Any]:
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    return [
        deployment["metadata"].get("name", ""),
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
        int(status.get("updatedReplicas", 0)),
        int(status.get("availableReplicas", 0)),
        _created(deployment),
        ",".join(c.get("name", "") for c in containers),
        ",".join(c.get("image", "") for c in containers),
        _selector_text(spec.get("selector")),
    ]


DEPLOYMENTS = Printer(
    [
        _name_column(),
        _column("Ready", "Number of the pod with ready state"),
        _column(
            "Up-to-date",
            "Total number of non-terminated pods targeted by this deployment that have the "
            "desired template spec.",
        ),
        _column(
            "Available",
            "Total number of available non-terminating pods (ready for at least "
            "minReadySeconds) targeted by this deployment.",
        ),
        _column("Age", _AGE_DOC),
        _column("Containers", "Names of each container in the template.", 1),
        _column("Images", "Images referenced by each container in the template.", 1),
        _column("Selector", "Label selector for pods.", 1),
    ],
    _deployment_cells,
)


def _binding_cells(binding: dict[str, Any]) -> list[Any]:
    ref = binding.get("roleRef") or {}
    users, groups, accounts = [], [], []
    for subject in binding.get("subjects") or []:
        kind, name = subject.get("kind"), subject.get("name", "")
        if kind == "User":
            users.append(name)
        elif kind == "Group":
            groups.append(name)
        elif kind == "ServiceAccount":
            accounts.append(f"{subject.get('namespace', '')}/{name}")
    return [
        binding["metadata"].get("name", ""),
        f"{ref.get('kind', '')}/{ref.get('name', '')}",
        _created(binding),
        ", ".join(users),
        ", ".join(groups),
        ", ".join(accounts),
    ]


def _bindings(what: str) -> Printer:
    return Printer(
        [
            _name_column(),
            _column(
                "Role",
                "RoleRef can reference a Role in the current namespace or a ClusterRole in the "
                "global namespace.",
            ),
            _column("Age", _AGE_DOC),
            _column("Users", f"Users in the {what}", 1),
            _column("Groups", f"Groups in the {what}", 1),
            _column("ServiceAccounts", f"ServiceAccounts in the {what}", 1),
        ],
        _binding_cells,
    )


BUILTIN_PRINTERS[("", "events")] = EVENTS
BUILTIN_PRINTERS[("apps", "deployments")] = DEPLOYMENTS
BUILTIN_PRINTERS[("rbac.authorization.k8s.io", "rolebindings")] = _bindings("roleBinding")
BUILTIN_PRINTERS[("rbac.authorization.k8s.io", "clusterrolebindings")] = _bindings(
    "clusterRoleBinding"
)


def _crd_cells(crd: dict[str, Any]) -> list[Any]:
    spec = crd.get("spec") or {}
    versions = sorted(
        v["name"] + ("(storage)" if v.get("storage") else "")
        for v in spec.get("versions") or []
        if v.get("served")
    )
    conditions = (crd.get("status") or {}).get("conditions") or []
    established = any(
        c.get("type") == "Established" and c.get("status") == "True" for c in conditions
    )
    names = spec.get("names") or {}
    return [
        crd["metadata"].get("name", ""),
        spec.get("scope", ""),
        ",".join(versions),
        crd["metadata"].get("creationTimestamp"),
        spec.get("group", ""),
        names.get("kind", ""),
        ",".join(names.get("shortNames") or []),
        established,
    ]


CRDS = Printer(
    [
        _name_column(),
        _column("Scope", "Cluster/Namespaced"),
        _column("Versions", "Served versions"),
        {"name": "Created At", "type": "date", "format": "", "description": _AGE_DOC},
        _column("Group", "API group", 1),
        _column("Kind", "CustomResource kind", 1),
        _column("ShortNames", "Short names", 1),
        {
            "name": "Established",
            "type": "boolean",
            "format": "",
            "description": "Established status",
            "priority": 1,
        },
    ],
    _crd_cells,
)
BUILTIN_PRINTERS[("apiextensions.k8s.io", "customresourcedefinitions")] = CRDS


def _default_cells(obj: dict[str, Any]) -> list[Any]:
    return [obj["metadata"].get("name", ""), obj["metadata"].get("creationTimestamp")]


DEFAULT = Printer(
    [
        _name_column(),
        {"name": "Created At", "type": "date", "format": "", "description": _AGE_DOC},
    ],
    _default_cells,
)


def builtin_printer(storage: tuple[str, str]) -> Printer:
    """The printer of a built-in resource, by (group, plural)."""
    return BUILTIN_PRINTERS.get(storage, DEFAULT)


def _row_object(obj: dict[str, Any], include: str, version: str) -> Any:
    if include == "Object":
        return obj
    if include == "None":
        return None
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": obj.get("metadata") or {},
    }


def _row(printer: Printer, obj: dict[str, Any], include: str, version: str) -> dict[str, Any]:
    cells = printer.cells(obj)[: len(printer.columns)]
    row: dict[str, Any] = {"cells": cells, "object": _row_object(obj, include, version)}
    if printer is PODS:
        phase = (obj.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            message = (
                "The pod has completed successfully." if phase == "Succeeded" else "The pod failed."
            )
            row["conditions"] = [
                {"type": "Completed", "status": "True", "reason": phase, "message": message}
            ]
    return row


def check_include(include: str | None) -> str:
    value = include or "Metadata"
    if value not in INCLUDE_OBJECT:
        raise errors.bad_request(f'unrecognized includeObject value: "{value}"')
    return value


def table(
    printer: Printer,
    objects: list[dict[str, Any]],
    *,
    resource_version: str,
    continue_token: str | None = None,
    include: str = "Metadata",
    version: str = "v1",
    headers: bool = True,
) -> dict[str, Any]:
    """A Table of `objects` (one object for a get, all the items for a list)."""
    meta: dict[str, Any] = {"resourceVersion": resource_version}
    if continue_token:
        meta["continue"] = continue_token
    body: dict[str, Any] = {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": meta,
        "columnDefinitions": printer.columns if headers else [],
        "rows": [_row(printer, obj, include, version) for obj in objects],
    }
    return body
