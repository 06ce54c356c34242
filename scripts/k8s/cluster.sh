#!/usr/bin/env bash
# Local test control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the
# kwok controller run as plain processes on 127.0.0.1 (kwokctl "binary" runtime, fed with the
# binaries from scripts/k8s/build.sh; nothing is downloaded). Fake kwok nodes: two CPU nodes and
# two GPU nodes with 8 nvidia.com/gpu each.
#
#   cluster.sh up          start (or reuse a healthy) cluster; prints `export KUBECONFIG=...`
#   cluster.sh down        stop every process of the cluster and remove its state
#   cluster.sh status      exit 0 when the cluster is up and healthy
#   cluster.sh kubeconfig  print the kubeconfig path
#
#   K8S_VERSION            Kubernetes version (default v1.36.3)
#   THRIFTY_K8S_CACHE      cache root (default $HOME/.cache/thrifty-k8s)
#   THRIFTY_CLUSTER_NAME   cluster name (default thrifty)
#
# Only the final `export KUBECONFIG=...` line of `up` goes to stdout; everything else to stderr.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
CACHE_ROOT="${THRIFTY_K8S_CACHE:-$HOME/.cache/thrifty-k8s}"
NAME="${THRIFTY_CLUSTER_NAME:-thrifty}"
BIN="$CACHE_ROOT/$K8S_VERSION/bin"
# kwokctl keeps its clusters under $KWOK_WORKDIR/clusters/<name>; a private work dir keeps the
# user's own ~/.kwok (and its kwok.yaml defaults) out of the picture.
export KWOK_WORKDIR="$CACHE_ROOT/kwok"
CLUSTER_DIR="$KWOK_WORKDIR/clusters/$NAME"
KUBECONFIG_PATH="$CLUSTER_DIR/kubeconfig.yaml"
VERSION_MARK="$CLUSTER_DIR/thrifty-k8s-version"
KUBECTL="${KUBECTL:-}"
if [[ -z "$KUBECTL" && -x "$BIN/kubectl" ]]; then
	KUBECTL="$BIN/kubectl" # the pinned one scripts/k8s/build.sh builds
elif [[ -z "$KUBECTL" ]]; then
	KUBECTL="$(command -v kubectl || true)"
fi
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok-controller)
GPU_PRODUCT="NVIDIA-H100-80GB-HBM3"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() {
	printf '[cluster] ERROR: %s\n' "$*" >&2
	exit 1
}

kwokctl() { "$BIN/kwokctl" --name "$NAME" "$@"; }
kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" --request-timeout=10s "$@"; }

need_tools() {
	[[ -n "$KUBECTL" && -x "$KUBECTL" ]] ||
		die "kubectl not found: run 'make k8s-tools' (scripts/k8s/build.sh) or set KUBECTL=/path/to/kubectl"
	local t
	for t in kwokctl kwok etcd kube-apiserver kube-controller-manager kube-scheduler; do
		[[ -x "$BIN/$t" ]] || die "$BIN/$t missing: run 'make k8s-tools' (scripts/k8s/build.sh) first"
	done
}

# healthy: every component process Ready, the apiserver ready, the fake nodes Ready with GPUs.
healthy() {
	[[ -f "$KUBECONFIG_PATH" && -x "$BIN/kwokctl" && -n "$KUBECTL" ]] || return 1
	[[ -f "$VERSION_MARK" && "$(cat "$VERSION_MARK")" == "$K8S_VERSION" ]] || return 1
	local table c
	table="$(kwokctl get components -o wide 2>/dev/null)" || return 1
	for c in "${COMPONENTS[@]}"; do
		grep -Eq "^${c}[[:space:]]+Ready[[:space:]]*$" <<<"$table" || return 1
		[[ -f "$CLUSTER_DIR/pids/$c.pid" ]] && running "$(cat "$CLUSTER_DIR/pids/$c.pid")" || return 1
	done
	apiserver_ready || return 1
	nodes_ready >/dev/null 2>&1
}

apiserver_ready() {
	local out
	out="$(kc get --raw=/readyz 2>/dev/null)" || return 1
	[[ "$out" == ok ]]
}

nodes_ready() {
	local n gpus ready
	for n in thrifty-cpu-0 thrifty-cpu-1 thrifty-gpu-0 thrifty-gpu-1; do
		ready="$(kc get node "$n" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" || return 1
		[[ "$ready" == "True" ]] || return 1
		if [[ "$n" == thrifty-gpu-* ]]; then
			gpus="$(kc get node "$n" -o 'jsonpath={.status.allocatable.nvidia\.com/gpu}')" || return 1
			[[ "$gpus" == "8" ]] || return 1
		fi
	done
}

write_config() {
	local cfg="$1"
	cat >"$cfg" <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeVersion: $K8S_VERSION
  quietPull: true
  cacheDir: $KWOK_WORKDIR/cache
  etcdBinary: $BIN/etcd
  kubeApiserverBinary: $BIN/kube-apiserver
  kubeControllerManagerBinary: $BIN/kube-controller-manager
  kubeSchedulerBinary: $BIN/kube-scheduler
  kwokControllerBinary: $BIN/kwok
  kubectlBinary: $KUBECTL
---
# Owner references are enforced as on OpenShift: setting or changing an object's
# ownerReferences needs delete on it (the operator's RBAC must say so).
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
componentsPatches:
  - name: kube-apiserver
    extraArgs:
      - key: enable-admission-plugins
        value: OwnerReferencesPermissionEnforcement
EOF
}

# node_manifest NAME KIND — a kwok-managed fake node (KIND is cpu or gpu).
node_manifest() {
	local name="$1" kind="$2"
	cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: $name
    thrifty.dev/pool: $kind
EOF
	if [[ "$kind" == gpu ]]; then
		cat <<EOF
    thrifty.dev/gpu: "true"
    nvidia.com/gpu.present: "true"
    nvidia.com/gpu.product: $GPU_PRODUCT
    nvidia.com/gpu.count: "8"
spec:
  taints:
  - key: nvidia.com/gpu
    value: present
    effect: NoSchedule
EOF
	else
		printf 'spec: {}\n'
	fi
	printf -- '---\n'
}

node_status_patch() {
	local kind="$1" res
	if [[ "$kind" == gpu ]]; then
		res='"cpu": "96", "memory": "1Ti", "pods": "110", "ephemeral-storage": "1Ti", "nvidia.com/gpu": "8"'
	else
		res='"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "200Gi"'
	fi
	printf '{"status": {"capacity": {%s}, "allocatable": {%s}}}' "$res" "$res"
}

create_nodes() {
	local n kind manifest=""
	for n in thrifty-cpu-0 thrifty-cpu-1 thrifty-gpu-0 thrifty-gpu-1; do
		kind="${n#thrifty-}"
		kind="${kind%-*}"
		manifest+="$(node_manifest "$n" "$kind")"$'\n'
	done
	kc apply -f - <<<"$manifest" >&2 || die "creating the fake nodes failed"
	# Capacity lives in status, which only the status subresource takes reliably.
	for n in thrifty-cpu-0 thrifty-cpu-1 thrifty-gpu-0 thrifty-gpu-1; do
		kind="${n#thrifty-}"
		kind="${kind%-*}"
		kc patch node "$n" --subresource=status --type=merge -p "$(node_status_patch "$kind")" >/dev/null ||
			die "setting the capacity of node $n failed"
	done
}

wait_for() {
	local what="$1" timeout="$2" start=$SECONDS
	shift 2
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS - start > timeout)); then
			return 1
		fi
		sleep 0.5
	done
	log "$what ($((SECONDS - start))s)"
}

dump_logs() {
	local f
	for f in "$CLUSTER_DIR"/logs/*.log; do
		[[ -f "$f" ]] || continue
		printf '\n----- %s (last 30 lines) -----\n' "$f" >&2
		tail -n 30 "$f" >&2
	done
}

cmd_up() {
	need_tools
	if healthy; then
		log "cluster '$NAME' ($K8S_VERSION) already running"
		printf 'export KUBECONFIG=%s\n' "$KUBECONFIG_PATH"
		return 0
	fi
	local start=$SECONDS cfg
	if [[ -d "$CLUSTER_DIR" ]]; then
		log "cluster '$NAME' exists but is not healthy (or another version): recreating it"
		cmd_down
	fi
	mkdir -p "$KWOK_WORKDIR"
	cfg="$KWOK_WORKDIR/$NAME-kwokctl.yaml"
	write_config "$cfg"
	log "creating cluster '$NAME' ($K8S_VERSION) from $BIN"
	# --kubeconfig "" keeps the user's ~/.kube/config untouched; 9>&- keeps the lock out of the
	# daemons kwokctl forks.
	if ! kwokctl --config "$cfg" create cluster --kubeconfig "" --wait 120s >&2 9>&-; then
		dump_logs
		die "kwokctl create cluster failed"
	fi
	printf '%s\n' "$K8S_VERSION" >"$VERSION_MARK"
	[[ -f "$KUBECONFIG_PATH" ]] || die "kwokctl did not write $KUBECONFIG_PATH"
	if ! wait_for "apiserver ready" 120 apiserver_ready; then
		dump_logs
		die "kube-apiserver did not become ready"
	fi
	wait_for "default ServiceAccount created" 120 kc -n default get serviceaccount default ||
		{
			dump_logs
			die "the default ServiceAccount never appeared (kube-controller-manager not working?)"
		}
	create_nodes
	wait_for "fake nodes Ready" 120 nodes_ready || {
		kc get nodes -o wide >&2 || true
		dump_logs
		die "the fake nodes did not become Ready with their GPUs"
	}
	local c table
	table="$(kwokctl get components -o wide)"
	for c in "${COMPONENTS[@]}"; do
		grep -Eq "^${c}[[:space:]]+Ready" <<<"$table" || {
			printf '%s\n' "$table" >&2
			dump_logs
			die "component $c is not Ready"
		}
	done
	log "cluster '$NAME' up in $((SECONDS - start))s; kubeconfig $KUBECONFIG_PATH"
	printf 'export KUBECONFIG=%s\n' "$KUBECONFIG_PATH"
}

# running PID: the process exists and is not a zombie (kwokctl's children are re-parented to
# whatever init there is, which may never reap them).
running() {
	local stat
	stat="$(cat 2>/dev/null "/proc/$1/stat")" || return 1
	stat="${stat##*) }"
	[[ "${stat:0:1}" != Z ]]
}

# our_pids: pids kwokctl recorded that still run one of this cluster's binaries.
our_pids() {
	local pidfile pid exe
	for pidfile in "$CLUSTER_DIR"/pids/*.pid; do
		[[ -f "$pidfile" ]] || continue
		pid="$(cat "$pidfile")"
		[[ "$pid" =~ ^[0-9]+$ ]] || continue
		# (read whole: `| head -n 1` under pipefail could fail the pipeline with SIGPIPE)
		exe="$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline")" || continue
		exe="${exe%%$'\n'*}"
		[[ "$exe" == "$CLUSTER_DIR/bin/"* ]] && printf '%s\n' "$pid"
	done
	return 0
}

cmd_down() {
	if [[ ! -d "$CLUSTER_DIR" ]]; then
		log "cluster '$NAME' does not exist"
		return 0
	fi
	local pids pid i
	pids="$(our_pids)"
	if [[ -x "$BIN/kwokctl" ]]; then
		kwokctl delete cluster >&2 || log "kwokctl delete cluster failed; stopping what is left"
	fi
	# kwokctl only signals the processes (and cannot when the matching kwokctl is gone, e.g.
	# after a version change): make sure every process of the cluster has exited.
	for pid in $pids; do
		kill "$pid" 2>/dev/null || true
	done
	for ((i = 0; i < 100; i++)); do
		local alive=""
		for pid in $pids; do
			if running "$pid"; then
				alive+=" $pid"
			fi
		done
		[[ -z "$alive" ]] && break
		if ((i == 80)); then
			log "killing processes that ignored SIGTERM:$alive"
			for pid in $alive; do
				kill -9 "$pid" 2>/dev/null || true
			done
		fi
		sleep 0.2
	done
	rm -rf "$CLUSTER_DIR"
	log "cluster '$NAME' removed"
}

cmd_status() {
	if healthy; then
		log "cluster '$NAME' ($K8S_VERSION) is running; KUBECONFIG=$KUBECONFIG_PATH"
		return 0
	fi
	log "cluster '$NAME' is not running (or not healthy)"
	return 1
}

# Serialise up/down of concurrent callers (two test sessions, make + pytest) when flock exists.
lock() {
	mkdir -p "$KWOK_WORKDIR"
	if command -v flock >/dev/null 2>&1; then
		exec 9>"$KWOK_WORKDIR/.$NAME.lock"
		flock -w 600 9 || die "timed out waiting for $KWOK_WORKDIR/.$NAME.lock"
	fi
}

case "${1:-}" in
up)
	lock
	cmd_up
	;;
down)
	lock
	cmd_down
	;;
status) cmd_status ;;
kubeconfig) printf '%s\n' "$KUBECONFIG_PATH" ;;
*)
	printf 'usage: %s up|down|status|kubeconfig\n' "$0" >&2
	exit 2
	;;
esac
