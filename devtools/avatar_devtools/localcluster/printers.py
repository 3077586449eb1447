"""kube-apiserver's printers of the built-in kinds the emulated API serves, for its Tables.

Each is `pkg/printers/internalversion` of Kubernetes 1.37 as far as these kinds reach: the same
columns (those with `priority` 1 shown by `-o wide`; the server always fills them), the same
cells, worded the same (`NotReady,SchedulingDisabled`, `CrashLoopBackOff`, `2 (5m ago)`,
`Role/name`, ...):

- nodes: NAME STATUS ROLES AGE VERSION, wide INTERNAL-IP EXTERNAL-IP OS-IMAGE KERNEL-VERSION
  CONTAINER-RUNTIME; pods: NAME READY STATUS RESTARTS AGE, wide IP NODE NOMINATED NODE
  READINESS GATES (a finished Pod's row carries the `Completed` condition);
- events: LAST SEEN TYPE REASON OBJECT MESSAGE; deployments: NAME READY UP-TO-DATE AVAILABLE
  AGE; role bindings: NAME ROLE AGE (wide: their subjects); namespaces: NAME STATUS AGE;
  secrets: NAME TYPE DATA AGE; configmaps: NAME DATA AGE; serviceaccounts: NAME AGE; leases:
  NAME HOLDER AGE; services: NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE, wide SELECTOR;
  endpoints: NAME ENDPOINTS AGE; CRDs: NAME SCOPE VERSIONS CREATED AT, wide GROUP KIND
  SHORTNAMES ESTABLISHED.

Any other kind gets `tables.DEFAULT` (NAME, CREATED AT: the real server's default for a kind
without a printer).
"""

from __future__ import annotations

from typing import Any

from avatar_devtools.localcluster import tables


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
        tables.age(meta.get("creationTimestamp")),
        info.get("kubeletVersion", ""),
        address("InternalIP"),
        address("ExternalIP"),
        info.get("osImage") or "<unknown>",
        kernel,
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


NODES = tables.Printer(
    [
        tables.name_column(),
        tables.column("Status", "The status of the node"),
        tables.column("Roles", "The roles of the node"),
        tables.column("Age", tables.AGE_DOC),
        tables.column("Version", "Kubelet Version reported by the node."),
        tables.column("Internal-IP", "List of addresses reachable to the node.", 1),
        tables.column("External-IP", "List of addresses reachable to the node.", 1),
        tables.column("OS-Image", "OS Image reported by the node from /etc/os-release.", 1),
        tables.column("Kernel-Version", "Kernel Version reported by the node.", 1),
        tables.column("Container-Runtime", "ContainerRuntime Version reported by the node.", 1),
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
        restarts_text = f"{restarts} ({tables.age(last_restart)} ago)"
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
        tables.age(meta.get("creationTimestamp")),
        (ips[0].get("ip") if ips else "") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        gates_text,
    ]


def _pod_conditions(pod: dict[str, Any]) -> list[dict[str, Any]]:
    phase = (pod.get("status") or {}).get("phase")
    if phase not in ("Succeeded", "Failed"):
        return []
    message = "The pod has completed successfully." if phase == "Succeeded" else "The pod failed."
    return [{"type": "Completed", "status": "True", "reason": phase, "message": message}]


PODS = tables.Printer(
    [
        tables.name_column(),
        tables.column("Ready", "The aggregate readiness state of this pod for accepting traffic."),
        tables.column("Status", "The aggregate status of the containers in this pod."),
        tables.column(
            "Restarts",
            "The number of times the containers in this pod have been restarted and when the "
            "last container in this pod has restarted.",
        ),
        tables.column("Age", tables.AGE_DOC),
        tables.column("IP", "podIP address allocated to the pod.", 1),
        tables.column("Node", "NodeName indicates in which node this pod is scheduled.", 1),
        tables.column("Nominated Node", "nominatedNodeName is set only when this pod preempts.", 1),
        tables.column("Readiness Gates", "If specified, all readiness gates will be evaluated.", 1),
    ],
    _pod_cells,
    _pod_conditions,
)


def _simple(columns: list[tuple[str, str]], cells: tables.Cells) -> tables.Printer:
    return tables.Printer([tables.name_column(), *(tables.column(n, d) for n, d in columns)], cells)


def _created(obj: dict[str, Any]) -> str:
    return tables.age(obj["metadata"].get("creationTimestamp"))


BUILTIN_PRINTERS: dict[tuple[str, str], tables.Printer] = {
    ("", "nodes"): NODES,
    ("", "pods"): PODS,
    ("", "namespaces"): _simple(
        [("Status", "The status of the namespace"), ("Age", tables.AGE_DOC)],
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
            ("Age", tables.AGE_DOC),
        ],
        lambda o: [
            o["metadata"]["name"],
            o.get("type", "Opaque"),
            len(o.get("data") or {}),
            _created(o),
        ],
    ),
    ("", "configmaps"): _simple(
        [("Data", ""), ("Age", tables.AGE_DOC)],
        lambda o: [
            o["metadata"]["name"],
            len(o.get("data") or {}) + len(o.get("binaryData") or {}),
            _created(o),
        ],
    ),
    ("", "serviceaccounts"): _simple(
        [("Age", tables.AGE_DOC)], lambda o: [o["metadata"]["name"], _created(o)]
    ),
    ("coordination.k8s.io", "leases"): _simple(
        [
            ("Holder", "holderIdentity contains the identity of the holder of a current lease."),
            ("Age", tables.AGE_DOC),
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
    first_seen = tables.age(first) if first else tables.age(event.get("eventTime"))
    last = event.get("lastTimestamp")
    last_seen = tables.age(last) if last else first_seen
    count = event.get("count") or 1
    series = event.get("series")
    if series:
        last_seen = tables.age(series.get("lastObservedTime"))
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


EVENTS = tables.Printer(
    [
        tables.column(
            "Last Seen", "The time at which the most recent occurrence of this event was recorded."
        ),
        tables.column(
            "Type", "Type of this event (Normal, Warning), new types could be added in the future"
        ),
        tables.column(
            "Reason",
            "This should be a short, machine understandable string that gives the reason for "
            "the transition into the object's current status.",
        ),
        tables.column("Object", "The object that this event is about."),
        tables.column("Subobject", "", 1),
        tables.column(
            "Source",
            "The component reporting this event. Should be a short machine understandable string.",
            1,
        ),
        tables.column("Message", "A human-readable description of the status of this operation."),
        tables.column(
            "First Seen",
            "The time at which the event was first recorded. (Time of server receipt is in "
            "TypeMeta.)",
            1,
        ),
        tables.column("Count", "The number of times this event has occurred.", 1),
        {**tables.name_column(), "priority": 1},
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


DEPLOYMENTS = tables.Printer(
    [
        tables.name_column(),
        tables.column("Ready", "Number of the pod with ready state"),
        tables.column(
            "Up-to-date",
            "Total number of non-terminated pods targeted by this deployment that have the "
            "desired template spec.",
        ),
        tables.column(
            "Available",
            "Total number of available non-terminating pods (ready for at least "
            "minReadySeconds) targeted by this deployment.",
        ),
        tables.column("Age", tables.AGE_DOC),
        tables.column("Containers", "Names of each container in the template.", 1),
        tables.column("Images", "Images referenced by each container in the template.", 1),
        tables.column("Selector", "Label selector for pods.", 1),
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


def _bindings(what: str) -> tables.Printer:
    return tables.Printer(
        [
            tables.name_column(),
            tables.column(
                "Role",
                "RoleRef can reference a Role in the current namespace or a ClusterRole in the "
                "global namespace.",
            ),
            tables.column("Age", tables.AGE_DOC),
            tables.column("Users", f"Users in the {what}", 1),
            tables.column("Groups", f"Groups in the {what}", 1),
            tables.column("ServiceAccounts", f"ServiceAccounts in the {what}", 1),
        ],
        _binding_cells,
    )


BUILTIN_PRINTERS[("", "events")] = EVENTS
BUILTIN_PRINTERS[("apps", "deployments")] = DEPLOYMENTS
BUILTIN_PRINTERS[("rbac.authorization.k8s.io", "rolebindings")] = _bindings("roleBinding")
BUILTIN_PRINTERS[("rbac.authorization.k8s.io", "clusterrolebindings")] = _bindings(
    "clusterRoleBinding"
)


def _service_external_ip(spec: dict[str, Any], status: dict[str, Any]) -> str:
    kind = spec.get("type") or "ClusterIP"
    external = list(spec.get("externalIPs") or [])
    if kind in ("ClusterIP", "NodePort"):
        return ",".join(external) or "<none>"
    if kind == "LoadBalancer":
        ingress = (status.get("loadBalancer") or {}).get("ingress") or []
        balancers = sorted({i.get("ip") or i.get("hostname") or "" for i in ingress} - {""})
        return ",".join([*balancers, *external]) or "<pending>"
    if kind == "ExternalName":
        return str(spec.get("externalName", ""))
    return "<unknown>"


def _service_cells(service: dict[str, Any]) -> list[Any]:
    spec, status = service.get("spec") or {}, service.get("status") or {}
    cluster_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    ports = ",".join(
        f"{p.get('port')}:{p['nodePort']}/{p.get('protocol', 'TCP')}"
        if p.get("nodePort")
        else f"{p.get('port')}/{p.get('protocol', 'TCP')}"
        for p in spec.get("ports") or []
    )
    selector = spec.get("selector") or {}
    return [
        service["metadata"].get("name", ""),
        spec.get("type") or "ClusterIP",
        cluster_ips[0] if cluster_ips else "<none>",
        _service_external_ip(spec, status),
        ports or "<none>",
        _created(service),
        ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "<none>",
    ]


SERVICES = tables.Printer(
    [
        tables.name_column(),
        tables.column("Type", "type determines how the Service is exposed."),
        tables.column("Cluster-IP", "clusterIP is the IP address of the service."),
        tables.column("External-IP", "externalIPs is a list of IP addresses for the service."),
        tables.column("Port(s)", "The list of ports that are exposed by this service."),
        tables.column("Age", tables.AGE_DOC),
        tables.column("Selector", "Route service traffic to pods with these labels.", 1),
    ],
    _service_cells,
)


def _endpoints_cells(endpoints: dict[str, Any]) -> list[Any]:
    shown: list[str] = []
    count, more, most = 0, False, 3
    for subset in endpoints.get("subsets") or []:
        addresses = subset.get("addresses") or []
        ports = subset.get("ports") or [None]
        for port in ports:
            count += len(addresses)
            for address in addresses:
                if len(shown) == most:
                    more = True
                    break
                ip = address.get("ip", "")
                host = f"[{ip}]" if ":" in ip else ip
                shown.append(host if port is None else f"{host}:{port.get('port')}")
    text = ",".join(shown) if endpoints.get("subsets") else "<none>"
    if more:
        text = f"{text} + {count - most} more..."
    return [endpoints["metadata"].get("name", ""), text, _created(endpoints)]


ENDPOINTS = tables.Printer(
    [
        tables.name_column(),
        tables.column("Endpoints", "The set of all endpoints is the union of all subsets."),
        tables.column("Age", tables.AGE_DOC),
    ],
    _endpoints_cells,
)
BUILTIN_PRINTERS[("", "services")] = SERVICES
BUILTIN_PRINTERS[("", "endpoints")] = ENDPOINTS


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


CRDS = tables.Printer(
    [
        tables.name_column(),
        tables.column("Scope", "Cluster/Namespaced"),
        tables.column("Versions", "Served versions"),
        {"name": "Created At", "type": "date", "format": "", "description": tables.AGE_DOC},
        tables.column("Group", "API group", 1),
        tables.column("Kind", "CustomResource kind", 1),
        tables.column("ShortNames", "Short names", 1),
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


def builtin_printer(storage: tuple[str, str]) -> tables.Printer:
    """The printer of a built-in resource, by (group, plural)."""
    return BUILTIN_PRINTERS.get(storage, tables.DEFAULT)
