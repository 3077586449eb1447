# The README's two commands are `make demo` (after `make install`, which it runs itself) and
# `make test`. Every target uses the project's own virtual environment in .venv.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck unit crds bench demo example-clip up down images clean

install: $(STAMP)

# torch first, pinned to the CPU wheel: any other request pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[operator,worker,agent,devtools,dev]"
	$(PY) -m pip check
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check sdk operator worker-image devtools tests bench
	$(VENV)/bin/ruff format --check sdk operator worker-image devtools tests bench

typecheck: install
	$(VENV)/bin/mypy sdk/avatar_sdk operator/avatar_operator worker-image/avatar_worker devtools/avatar_devtools

unit: install
	$(PY) -m pytest

# The README's test command: lint, types, every test layer that runs without a cluster.
test: lint typecheck unit

# crds/avatarsessions.yaml and crds/avatarpools.yaml from the models, and the chart's copies.
crds: install
	$(PY) -m avatar_sdk.crd --out-dir crds
	cp crds/avatarsessions.yaml crds/avatarpools.yaml charts/avatar-operator/crds/

# Each prints one JSON object (see the README for figures and the machine they came from).
bench: install
	@for b in bench/*.py; do echo "# $$b"; $(PY) $$b || exit 1; done

# The main job without a cluster: the emulated Kubernetes API, the real operator, worker Pods run
# as local avatar-worker processes, a local room, and an agent that creates an AvatarSession,
# speaks, barges in and leaves; a live status table, then demo.mp4 (what a viewer received), the
# measured figures, and a check that nothing was left behind (exit 1 otherwise).
# Options: make demo DEMO_ARGS="--audio my.wav --renderer waveform --duration 4 --no-live"
# (--real-cluster: the same on a real control plane, the operator installed by helm; needs Go)
DEMO_ARGS ?=
demo: install
	$(PY) -m avatar_devtools.demo --out demo.mp4 $(DEMO_ARGS)

# examples/clip.mp4: the default portrait speaking an espeak-ng sentence (see examples/README.md)
example-clip: install
	examples/clip.sh

# --- images and the kind cluster -----------------------------------------------------------
# `make images`: the operator and worker images, tagged with the chart's appVersion (what the
# chart runs by default). WORKER_FLAVOR=cpu builds the worker on PyTorch's CPU wheels and a plain
# Ubuntu base (small; for kind), cuda (default) on the CUDA runtime for GPU nodes.
DOCKER ?= docker
KIND ?= kind
KUBECTL ?= kubectl
HELM ?= helm
IMAGE_REPO ?= ghcr.io/avatar-operator
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: "\(.*\)"/\1/p' charts/avatar-operator/Chart.yaml)
WORKER_FLAVOR ?= cuda
WORKER_BUILD_ARGS_cuda :=
WORKER_BUILD_ARGS_cpu := --build-arg CUDA_IMAGE=ubuntu:24.04 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
KIND_CLUSTER ?= avatar-operator
RELEASE ?= avatar-operator
RELEASE_NAMESPACE ?= avatar-system
KIND_VALUES := charts/avatar-operator/ci/kind-values.yaml

images:
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make images: needs a running Docker daemon ($(DOCKER) info failed)"; exit 2; }
	$(DOCKER) build -f operator/Dockerfile -t $(IMAGE_REPO)/operator:$(IMAGE_TAG) .
	$(DOCKER) build -f worker-image/Dockerfile $(WORKER_BUILD_ARGS_$(WORKER_FLAVOR)) -t $(IMAGE_REPO)/worker:$(IMAGE_TAG) .

# A kind cluster (kind-config.yaml) with the chart installed and examples/session.yaml Joined.
# Without VIDEOSDK_API_KEY/VIDEOSDK_SECRET_KEY the worker joins the chart's local room; with
# them it joins the VideoSDK meeting ROOM_ID.
up:
	@for tool in $(DOCKER) $(KIND) $(KUBECTL) $(HELM); do command -v $$tool >/dev/null || { echo "make up: $$tool is not installed"; exit 2; }; done
	@$(KIND) get clusters 2>/dev/null | grep -qx $(KIND_CLUSTER) || $(KIND) create cluster --name $(KIND_CLUSTER) --config kind-config.yaml
	$(MAKE) images WORKER_FLAVOR=cpu
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(IMAGE_REPO)/operator:$(IMAGE_TAG) $(IMAGE_REPO)/worker:$(IMAGE_TAG)
	@if [ -n "$$VIDEOSDK_API_KEY" ] && [ -n "$$VIDEOSDK_SECRET_KEY" ]; then \
		test -n "$(ROOM_ID)" || { echo "make up: with VideoSDK credentials, set ROOM_ID to a meeting id"; exit 2; }; \
		$(KUBECTL) create namespace $(RELEASE_NAMESPACE) --dry-run=client -o yaml | $(KUBECTL) apply -f -; \
		$(KUBECTL) -n $(RELEASE_NAMESPACE) create secret generic videosdk-credentials --from-literal=apiKey="$$VIDEOSDK_API_KEY" --from-literal=secret="$$VIDEOSDK_SECRET_KEY" --dry-run=client -o yaml | $(KUBECTL) apply -f -; \
		$(HELM) upgrade --install $(RELEASE) ./charts/avatar-operator --namespace $(RELEASE_NAMESPACE) --values $(KIND_VALUES) --set localRoom.enabled=false --wait; \
		sed 's/^  roomId: .*/  roomId: $(ROOM_ID)/' examples/session.yaml | $(KUBECTL) apply -f -; \
	else \
		$(HELM) upgrade --install $(RELEASE) ./charts/avatar-operator --namespace $(RELEASE_NAMESPACE) --create-namespace --values $(KIND_VALUES) --wait; \
		$(KUBECTL) apply -f examples/session.yaml; \
	fi
	$(KUBECTL) wait avatarsession/kind-demo --for=jsonpath='{.status.phase}'=Joined --timeout=300s
	$(KUBECTL) get avatarsessions -o wide
	@echo "watch it: kubectl get avs -w; end it: kubectl delete avs kind-demo; remove the cluster: make down"

down:
	$(KIND) delete cluster --name $(KIND_CLUSTER)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info demo.mp4 demo.json demo.wav

# --- the real control plane (hack/kube/, avatar_devtools.realcluster) -------------------------
# `make cluster-up` builds (or reuses, from a cache outside the repository) etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl and helm from their pinned Go modules, starts
# them on loopback with the node agent's GPU nodes (FLEET), writes .cluster/kubeconfig and links
# kubectl and helm into .cluster/bin/:  KUBECONFIG=.cluster/kubeconfig .cluster/bin/kubectl get nodes
# `make cluster-down` stops every process it started.
FLEET ?= examples/fleet.yaml

.PHONY: kube-binaries cluster-up cluster-down cluster-status

kube-binaries:
	hack/kube/build.sh

cluster-up: install
	$(PY) -m avatar_devtools.realcluster up --fleet $(FLEET)

cluster-down:
	$(PY) -m avatar_devtools.realcluster down

cluster-status:
	$(PY) -m avatar_devtools.realcluster status
