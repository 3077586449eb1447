"""An emulated Kubernetes cluster for tests, benchmarks and the demo: `localcluster`.

No real cluster runs on the development machines, so the control plane is proven against this
emulation of the Kubernetes API, which the project owns (KMock's emulator was measured and is
quadratic in traffic). Modules, from the bottom up:

- `errors`: Kubernetes `Status` objects (404, 409, 410, 415, 422, ...); `clock`: timestamps.
- `selectors`: label and field selectors.
- `patches`: JSON merge patch, JSON patch (with `test`), strategic merge patch (a subset).
- `cel`: a CRD's CEL validation rules (`x-kubernetes-validations`), compiled by cel-python.
- `schemas`: a CRD's openAPIV3Schema applied as the API server does (prune, default, validate,
  then the CEL rules).
- `tables`: the `meta.k8s.io` Tables `kubectl get` prints (a CRD's printer columns); `printers`:
  kube-apiserver's printers of the built-in kinds (nodes, pods, events, ...).
- `resources`: what is served (built-ins and CRD-registered kinds) and the discovery documents.
- `validation`: admission of the built-in kinds (names, pods, secrets, CRDs, ...).
- `watching`: stored records, the per-resource event log, watchers.
- `store`: objects, the one resourceVersion counter, the write path, garbage collection.
- `openapi`: the OpenAPI v3 documents kubectl reads (`apply`'s validation, `explain`).
- `protobuf`: the protobuf request bodies of kubectl's typed `create` commands, decoded.
- `fieldcheck`: unknown fields of built-in kinds (`fieldValidation`), by kube-apiserver's schemas.
- `apiserver`: the HTTP API (aiohttp on 127.0.0.1): CRUD, patch, apply, watch, discovery.
- `fleet`, `kubelet`: simulated GPU nodes and the kubelet (and scheduler) that runs their pods.
- `cluster`: all of it as one object (`LocalCluster`), or as a child process (`ClusterProcess`);
  `kubeconfig`: kubeconfig files for it.
- `kopfrun`: the real kopf operator against a localcluster (in a thread with its own loop).
- `fixtures`: pytest fixtures; `__main__`: the command line.
"""
