#!/usr/bin/env bash
# Build (or reuse) the pinned binaries of the local test control plane from Go modules only:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok, kwokctl, helm
# and kubeconform. Nothing is downloaded from release pages; the Go module proxy is the only source.
#
#   K8S_VERSION          Kubernetes version (default v1.36.3)
#   THRIFTY_K8S_CACHE    cache root (default $HOME/.cache/thrifty-k8s); the binaries land in
#                        $THRIFTY_K8S_CACHE/$K8S_VERSION/bin
#   THRIFTY_BUILD_JOBS   parallel build jobs (default 2)
#
# A second run with everything present is a no-op. All output goes to stderr.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
KUBECONFORM_VERSION="${KUBECONFORM_VERSION:-v0.8.0}"
JOBS="${THRIFTY_BUILD_JOBS:-2}"

CACHE_ROOT="${THRIFTY_K8S_CACHE:-$HOME/.cache/thrifty-k8s}"
ROOT="$CACHE_ROOT/$K8S_VERSION"
BIN="$ROOT/bin"
SRC="$ROOT/src"
STAMP="$BIN/.versions"
TOOLS=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok kwokctl helm kubeconform)

log() { printf '[k8s-build] %s\n' "$*" >&2; }
die() {
	printf '[k8s-build] ERROR: %s\n' "$*" >&2
	exit 1
}

if [[ ! "$K8S_VERSION" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]]; then
	die "K8S_VERSION must look like v1.36.3, got '$K8S_VERSION'"
fi
K8S_MINOR="${BASH_REMATCH[1]}"
K8S_PATCH="${BASH_REMATCH[2]}"
STAGING_VERSION="v0.${K8S_MINOR}.${K8S_PATCH}"

WANT_STAMP="k8s=$K8S_VERSION etcd=$ETCD_VERSION kwok=$KWOK_VERSION helm=$HELM_VERSION kubeconform=$KUBECONFORM_VERSION"

print_bins() {
	local t
	for t in "${TOOLS[@]}"; do
		printf '  %s\n' "$BIN/$t"
	done >&2
}

all_present() {
	local t
	[[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT_STAMP" ]] || return 1
	for t in "${TOOLS[@]}"; do
		[[ -x "$BIN/$t" ]] || return 1
	done
}

if all_present; then
	log "cached in $BIN ($WANT_STAMP)"
	print_bins
	exit 0
fi

GO="${GO:-}"
if [[ -z "$GO" ]]; then
	if command -v go >/dev/null 2>&1; then
		GO="$(command -v go)"
	elif [[ -x /usr/local/go/bin/go ]]; then
		GO=/usr/local/go/bin/go
	else
		die "Go is required (https://go.dev/dl/); set GO=/path/to/go"
	fi
fi

GO_VERSION="$("$GO" version 2>&1)" || die "'$GO version' failed: $GO_VERSION"

mkdir -p "$BIN" "$SRC"
rm -f "$STAMP"
export CGO_ENABLED=0
export GOFLAGS="-buildvcs=false -trimpath -p=$JOBS"
# Keep the module and build caches persistent (go's defaults live under $HOME) so CI re-runs
# reuse them; honour whatever the caller already set.
GOMODCACHE="$("$GO" env GOMODCACHE)"
GOCACHE="$("$GO" env GOCACHE)"
export GOMODCACHE GOCACHE
NICE=(nice -n 10)
BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

log "go: $GO_VERSION; jobs: $JOBS; GOMODCACHE=$GOMODCACHE GOCACHE=$GOCACHE"

# install_tool NAME PKG@VERSION LDFLAGS — `go install` for modules without replace directives.
install_tool() {
	local name="$1" pkg="$2" ldflags="$3" start
	if [[ -x "$BIN/$name" && -f "$BIN/.$name.version" && "$(cat "$BIN/.$name.version")" == "$pkg" ]]; then
		log "$name: cached"
		return 0
	fi
	start=$SECONDS
	log "$name: go install $pkg"
	GOBIN="$BIN" "${NICE[@]}" "$GO" install -ldflags "-s -w $ldflags" "$pkg" ||
		die "building $name from $pkg failed"
	[[ -x "$BIN/$name" ]] || die "$name missing after go install $pkg"
	printf '%s\n' "$pkg" >"$BIN/.$name.version"
	log "$name: built in $((SECONDS - start))s"
}

# --- etcd: its server module carries replace directives, so build it through a wrapper module.
build_etcd() {
	local dir="$SRC/etcd" start
	if [[ -x "$BIN/etcd" && -f "$BIN/.etcd.version" && "$(cat "$BIN/.etcd.version")" == "$ETCD_VERSION" ]]; then
		log "etcd: cached"
		return 0
	fi
	start=$SECONDS
	log "etcd: building go.etcd.io/etcd/server/v3@$ETCD_VERSION"
	rm -rf "$dir"
	mkdir -p "$dir"
	cat >"$dir/go.mod" <<EOF
module thrifty.local/etcd-build

go 1.26.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
	(
		cd "$dir"
		"${NICE[@]}" "$GO" get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" &&
			"${NICE[@]}" "$GO" build -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
	) || die "building etcd $ETCD_VERSION failed"
	printf '%s\n' "$ETCD_VERSION" >"$BIN/.etcd.version"
	log "etcd: built in $((SECONDS - start))s"
}

# --- Kubernetes: k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
# ./staging paths, which do not apply to a dependency; pin every one to the matching v0.X.Y.
build_kubernetes() {
	local dir="$SRC/kubernetes" start gomod mods ldflags pkgs
	local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl) todo=() m
	# A cache of this version missing some command (kubectl, added later) builds only those.
	if [[ -f "$BIN/.kubernetes.version" && "$(cat "$BIN/.kubernetes.version")" == "$K8S_VERSION" ]]; then
		for m in "${cmds[@]}"; do
			[[ -x "$BIN/$m" ]] || todo+=("$m")
		done
	else
		rm -f "$BIN/.kubernetes.version"
		todo=("${cmds[@]}")
	fi
	if ((${#todo[@]} == 0)); then
		log "kubernetes: cached"
		return 0
	fi
	start=$SECONDS
	log "kubernetes: resolving k8s.io/kubernetes@$K8S_VERSION (staging modules -> $STAGING_VERSION)"
	rm -rf "$dir"
	mkdir -p "$dir"
	gomod="$(cd "$dir" && "$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
		sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
	[[ -n "$gomod" && -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION go.mod"
	mods="$(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$gomod" | sort -u)"
	[[ -n "$mods" ]] || die "no staging replace directives found in $gomod"
	{
		printf 'module thrifty.local/kubernetes-build\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
		for m in $mods; do
			printf '\t%s => %s %s\n' "$m" "$m" "$STAGING_VERSION"
		done
		printf ')\n'
	} >"$dir/go.mod"
	log "kubernetes: pinned $(wc -w <<<"$mods") staging modules"
	pkgs=()
	for m in "${cmds[@]}"; do
		pkgs+=("k8s.io/kubernetes/cmd/$m")
	done
	(cd "$dir" && "${NICE[@]}" "$GO" get "${pkgs[@]/%/@$K8S_VERSION}") ||
		die "resolving the k8s.io/kubernetes@$K8S_VERSION module graph failed"
	ldflags="-s -w"
	for m in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X $m.gitVersion=$K8S_VERSION -X $m.gitMajor=1 -X $m.gitMinor=$K8S_MINOR"
		ldflags+=" -X $m.gitCommit=0000000000000000000000000000000000000000 -X $m.gitTreeState=clean"
		ldflags+=" -X $m.buildDate=$BUILD_DATE"
	done
	for m in "${todo[@]}"; do
		local t0=$SECONDS
		log "kubernetes: building $m"
		(cd "$dir" && "${NICE[@]}" "$GO" build -ldflags "$ldflags" -o "$BIN/$m" "k8s.io/kubernetes/cmd/$m") ||
			die "building $m $K8S_VERSION failed"
		log "kubernetes: $m built in $((SECONDS - t0))s"
	done
	# The output is read whole before it is matched: `grep -q` exits at its first match, and
	# under pipefail a writer still printing (kubectl's Kustomize line) dies of SIGPIPE and
	# fails the check now and then.
	local said
	said=$("$BIN/kube-apiserver" --version)
	grep -qx "Kubernetes $K8S_VERSION" <<<"$said" ||
		die "kube-apiserver --version does not report $K8S_VERSION: $said"
	said=$("$BIN/kubectl" version --client)
	grep -qx "Client Version: $K8S_VERSION" <<<"$said" ||
		die "kubectl version --client does not report $K8S_VERSION: $said"
	printf '%s\n' "$K8S_VERSION" >"$BIN/.kubernetes.version"
	log "kubernetes: built in $((SECONDS - start))s"
}

TOTAL_START=$SECONDS
build_etcd
KWOK_LDFLAGS="-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION#v}"
install_tool kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "$KWOK_LDFLAGS"
install_tool kwokctl "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION" "$KWOK_LDFLAGS"
install_tool kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" "-X main.version=$KUBECONFORM_VERSION"
install_tool helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
	"-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
build_kubernetes

for t in "${TOOLS[@]}"; do
	[[ -x "$BIN/$t" ]] || die "$BIN/$t is missing after the build"
done
printf '%s\n' "$WANT_STAMP" >"$STAMP"
log "all binaries ready in $BIN ($((SECONDS - TOTAL_START))s)"
print_bins
