#!/usr/bin/env bash
# Builds the real control plane the realcluster tests run, from pinned Go modules:
#   kubernetes/  kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
#   etcd/        etcd
#   helm/        helm
# into a cache outside the repository, keyed by the Kubernetes version and a
# hash of the modules' go.mod/go.sum (and RECIPE below):
#   ${AVATAR_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/avatar-operator/kube}/<version>-<hash>/bin/
# A second run is a cache hit and builds nothing. The last line printed is the bin dir.
#
# Usage: hack/kube/build.sh [--print-dir]   (--print-dir: print the bin dir, build nothing)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.0
HELM_VERSION=v4.3.2
# Bump when the build flags below change, so the cache key changes with them.
RECIPE=1
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd helm)

log() { echo "hack/kube/build.sh: $*" >&2; }

key_hash() {
  {
    echo "recipe=${RECIPE} k8s=${K8S_VERSION} etcd=${ETCD_VERSION} helm=${HELM_VERSION}"
    for m in kubernetes etcd helm; do
      cat "${HERE}/${m}/go.mod" "${HERE}/${m}/go.sum"
    done
  } | sha256sum | cut -c1-12
}

CACHE_ROOT="${AVATAR_KUBE_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/avatar-operator/kube}"
DEST="${CACHE_ROOT}/${K8S_VERSION}-$(key_hash)"
BIN="${DEST}/bin"

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "${BIN}"
  exit 0
fi

complete() {
  [[ -f "${DEST}/.complete" ]] || return 1
  local b
  for b in "${BINARIES[@]}"; do [[ -x "${BIN}/${b}" ]] || return 1; done
}

if complete; then
  log "cache hit: ${BIN}"
  echo "${BIN}"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  log "no 'go' on PATH: install Go >= 1.26 (https://go.dev/dl/) to build the real control plane"
  exit 3
fi

mkdir -p "${CACHE_ROOT}"
# One build at a time per cache key (make and a test session may race).
exec 9>"${DEST}.lock"
flock 9
if complete; then
  log "cache hit (built by a concurrent run): ${BIN}"
  echo "${BIN}"
  exit 0
fi

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:+${GOFLAGS} }-mod=mod"
STAGE="$(mktemp -d "${CACHE_ROOT}/.stage.XXXXXX")"
trap 'rm -rf "${STAGE}"' EXIT
chmod 755 "${STAGE}"
mkdir -p "${STAGE}/bin"
started=$(date +%s)

module_time() { # the release's commit time, from the module proxy's metadata: a reproducible build date
  (cd "$1" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' "$2")
}

# Kubernetes: flags as its hack/lib/golang.sh and hack/lib/version.sh set them for a
# release build (static, -trimpath, -s -w, tags selinux,notest,grpcnotrace, version vars).
k8s_ldflags=""
add_k8s_ldflag() {
  k8s_ldflags+=" -X 'k8s.io/client-go/pkg/version.$1=$2' -X 'k8s.io/component-base/version.$1=$2'"
}
major="${K8S_VERSION#v}"; major="${major%%.*}"
minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
add_k8s_ldflag gitVersion "${K8S_VERSION}"
add_k8s_ldflag gitMajor "${major}"
add_k8s_ldflag gitMinor "${minor}"
add_k8s_ldflag gitTreeState archive
add_k8s_ldflag buildDate "$(module_time "${HERE}/kubernetes" k8s.io/kubernetes)"
log "building kube-apiserver kube-controller-manager kube-scheduler kubectl ${K8S_VERSION}"
(cd "${HERE}/kubernetes" && go build -p 2 -trimpath -tags selinux,notest,grpcnotrace \
  -ldflags "all=${k8s_ldflags} -s -w" -o "${STAGE}/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)

# etcd: as its scripts/build_lib.sh (static, -trimpath; GitSHA names the release here).
log "building etcd ${ETCD_VERSION}"
(cd "${HERE}/etcd" && go build -p 2 -trimpath \
  -ldflags "-s -w -X 'go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}'" \
  -o "${STAGE}/bin/etcd" go.etcd.io/etcd/server/v3)

# Helm: as its Makefile for a tagged release.
log "building helm ${HELM_VERSION}"
(cd "${HERE}/helm" && go build -p 2 -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v4/internal/version.metadata= -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
  -o "${STAGE}/bin/helm" helm.sh/helm/v4/cmd/helm)

rm -rf "${DEST}"
echo "$(( $(date +%s) - started ))" > "${STAGE}/build-seconds"  # bench/realcluster.py reports it
touch "${STAGE}/.complete"
mv "${STAGE}" "${DEST}"
trap - EXIT
log "built in $(( $(date +%s) - started )) s: ${BIN}"
echo "${BIN}"
