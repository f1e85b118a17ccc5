#!/usr/bin/env bash
# podman.sh [start|stop|status] -- rootful Podman from Debian and an engine
# image $IMAGE (Debian Python, ipphpc from this source tree) for the tests.
#
# No image registry is reachable, so the base image is made here: mmdebstrap
# writes a minimal Debian ($SUITE, whose Python minor version matches the
# host's) with a venv at /opt/ipphpc holding ipphpc's dependencies from PyPI,
# and `podman import` turns that tarball into $BASE. The engine image is then
# built from containers/Containerfile on top of it, with the project installed
# from a clean copy of the source tree (no network needed for that step).
#
# Cached under $DIR: Podman's storage lives in $DIR/storage, so the base, the
# image and its layer cache survive; the base is remade only when its recipe
# (suite, packages, dependencies) changes, the project layer only when the
# source does. There is no daemon: `stop` removes containers left from $IMAGE.
set -euo pipefail
SVC=podman
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

SRC=$(cd "$HERE/../.." && pwd)
DIR=$IPPHPC_CI_STATE/podman
SUITE=${IPPHPC_PODMAN_SUITE:-bookworm}
MIRROR=${IPPHPC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=localhost/ipphpc-ci-base:$SUITE
IMAGE=${IPPHPC_PODMAN_IMAGE:-localhost/ipphpc-engine:ci}
# the engine needs only python3 and a venv; the rest comes as wheels
DEB_PKGS="python3 python3-venv ca-certificates"
PIP_EXTRA="numpy"
HOST_CA=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
CONF=/etc/containers/containers.conf
STORAGE_CONF=/etc/containers/storage.conf
MARK="# Written by ipphpc .ci/services/podman.sh"
ACTION=${1:-start}

# our_file FILE: absent, or written by this script (never overwrite a site's file)
our_file() { [ ! -e "$1" ] || head -n1 "$1" | grep -qF "$MARK"; }

configure() {
    our_file $CONF || die "$CONF exists and was not written by this script: set cgroup_manager=\"cgroupfs\" and events_logger=\"file\" there (no systemd here), or move it away"
    our_file $STORAGE_CONF || die "$STORAGE_CONF exists and was not written by this script: move it away, or point graphroot at $DIR/storage"
    # no systemd: cgroupfs and a file for events; storage under $DIR so the images are cached with it
    write_if_changed $CONF 0644 root:root <<EOF || true
$MARK (no systemd on this machine)
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "$OCI_RUNTIME"
EOF
    write_if_changed $STORAGE_CONF 0644 root:root <<EOF || true
$MARK (images cached with the CI state)
[storage]
driver = "overlay"
graphroot = "$DIR/storage"
runroot = "/run/containers/storage"
EOF
}

# the project's dependencies, read from pyproject.toml
project_deps() {
    python3 -c "import sys, tomllib; print(' '.join(tomllib.load(open(sys.argv[1], 'rb'))['project']['dependencies']))" \
        "$SRC/pyproject.toml"
}

# build_base: mmdebstrap a minimal Debian with the venv, import it as $BASE (cached by recipe)
build_base() {
    local deps key ca_in=/usr/local/share/ipphpc-ci/host-ca.crt pipenv qdeps
    deps=$(project_deps) || die "cannot read the dependencies from $SRC/pyproject.toml"
    key=$(printf '%s\n' "$SUITE" "$MIRROR" "$DEB_PKGS" "$deps hatchling $PIP_EXTRA" "recipe 1" | sha256sum | cut -c1-16)
    if [ "$(cat "$DIR/base.key" 2>/dev/null)" = "$key" ] && podman image exists "$BASE"; then
        BASE_MSG="base cached"
        return
    fi
    rm -f "$DIR/base.key"
    log "mmdebstrap $SUITE with $DEB_PKGS, then pip: $deps $PIP_EXTRA (log: $DIR/base.log)"
    # pip trusts the host's CA bundle (a site may intercept TLS) and its index, if one is set
    # pip runs with a clean environment: the host's PIP_*/REQUESTS_CA_BUNDLE name host paths
    pipenv="env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_CERT=$ca_in"
    [ -n "${PIP_INDEX_URL:-}" ] && pipenv+=" PIP_INDEX_URL=$(printf %q "$PIP_INDEX_URL")"
    # `pyzmq>=25` is a redirection to the shell that runs the hook: quote every requirement
    qdeps=$(printf '%q ' $deps hatchling $PIP_EXTRA)
    rm -rf "$DIR/base.tmp.tar"
    mmdebstrap --mode=root --variant=minbase --include="${DEB_PKGS// /,}" \
        --aptopt='Acquire::Retries "3"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --customize-hook="install -D -m 0644 '$HOST_CA' \"\$1$ca_in\"" \
        --customize-hook="chroot \"\$1\" python3 -m venv /opt/ipphpc" \
        --customize-hook="chroot \"\$1\" $pipenv /opt/ipphpc/bin/pip install --no-cache-dir $qdeps" \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
        "$SUITE" "$DIR/base.tmp.tar" "$MIRROR" >"$DIR/base.log" 2>&1 \
        || { tail -n 20 "$DIR/base.log" >&2; die "mmdebstrap $SUITE from $MIRROR failed (log: $DIR/base.log)"; }
    log "podman import $DIR/base.tmp.tar as $BASE"
    podman import --change 'ENV PATH=/opt/ipphpc/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "ENV PIP_CERT=$ca_in" "$DIR/base.tmp.tar" "$BASE" >>"$DIR/base.log" 2>&1 \
        || { tail -n 5 "$DIR/base.log" >&2; die "podman import of $DIR/base.tmp.tar failed (log: $DIR/base.log)"; }
    # the image in Podman's storage is the cache; the tarball would only double it
    rm -f "$DIR/base.tmp.tar"
    echo "$key" >"$DIR/base.key"
    BASE_MSG="base built"
}

# build_image: the engine image from containers/Containerfile, context = a clean copy of the tree
build_image() {
    local ctx=$DIR/context before after
    rm -rf "$ctx"
    mkdir -p "$ctx"
    # tracked and new (not ignored) files only: no venv, no caches, no build output
    (cd "$SRC" && git ls-files -co --exclude-standard -z -- pyproject.toml README.md ipphpc templates \
        | xargs -0 -r stat --printf '%n\0' 2>/dev/null | tar -c --null -T - -f -) | tar -x -C "$ctx" \
        || die "cannot copy the source tree $SRC into $ctx"
    before=$(podman image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    log "podman build $IMAGE from $SRC (log: $DIR/build.log)"
    podman build --network=host --layers -f "$SRC/containers/Containerfile" \
        --build-arg BASE="$BASE" --build-arg PIP_EXTRA="$PIP_EXTRA" -t "$IMAGE" "$ctx" >"$DIR/build.log" 2>&1 \
        || { tail -n 20 "$DIR/build.log" >&2; die "podman build of $IMAGE failed (log: $DIR/build.log)"; }
    after=$(podman image inspect -f '{{.Id}}' "$IMAGE")
    if [ "$before" = "$after" ]; then IMAGE_MSG="image unchanged"; else IMAGE_MSG="image built"; fi
    # dangling layers of earlier builds would fill the cache
    podman image prune -f >/dev/null 2>&1 || true
}

smoke_test() {
    local out
    out=$(timeout 60 podman run --rm --network=host "$IMAGE" \
        python3 -c 'import ipphpc, numpy, zmq, sys; print(ipphpc.__version__, "python", sys.version.split()[0])' 2>&1) \
        || die "smoke: podman run $IMAGE failed: $out"
    SMOKE_MSG="smoke ok (ipphpc $out)"
    # functions travel as bytecode: engines in the image need the client's Python minor version
    local host_py img_py
    host_py=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    img_py=$(echo "$out" | sed -n 's/.*python \([0-9]*\.[0-9]*\).*/\1/p')
    [ "$host_py" = "$img_py" ] || warn "the image has Python $img_py and this host $host_py: clients here cannot send lambdas to its engines (set IPPHPC_PODMAN_SUITE)"
}

do_status() {
    if ! command -v podman >/dev/null; then echo "$SVC: NOT installed"; return 3; fi
    if ! podman image exists "$IMAGE" 2>/dev/null; then echo "$SVC: image $IMAGE missing (run podman.sh start)"; return 3; fi
    echo "$SVC: ready (podman $(podman version -f '{{.Client.Version}}' 2>/dev/null), image $IMAGE $(podman image inspect -f '{{.Id}}' "$IMAGE" | cut -c1-12))"
}

do_stop() {
    local ids=""
    if command -v podman >/dev/null; then
        ids=$(podman ps -aq --filter "ancestor=$IMAGE" 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -z "$ids" ] || podman rm -f -t 5 $ids >/dev/null 2>&1 || die "cannot remove containers: $ids"
    fi
    smoke_forget
    env_fragment_forget
    summary "stopped (removed $(echo $ids | wc -w) container(s) of $IMAGE; images kept in $DIR/storage)"
}

do_start() {
    need_root
    mkdir -p "$DIR"
    # crun refuses hybrid cgroups (v1 controllers beside a v2 mount, as here): runc copes
    OCI_RUNTIME=crun
    [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || OCI_RUNTIME=runc
    apt_install podman catatonit netavark mmdebstrap $OCI_RUNTIME
    phase install
    configure
    podman info >"$DIR/info.log" 2>&1 || { tail -n 5 "$DIR/info.log" >&2; die "podman info fails (see $DIR/info.log)"; }
    phase configure
    build_base
    phase base
    build_image
    phase image
    local key
    key=$(podman image inspect -f '{{.Id}}' "$IMAGE")
    SMOKE_MSG="smoke skipped (already passed against this image)"
    if smoke_wanted "$key"; then
        smoke_test
        smoke_done "$key"
        phase smoke
    fi
    env_fragment <<EOF
export IPPHPC_PODMAN_IMAGE=$IMAGE
EOF
    summary "up ($BASE_MSG, $IMAGE_MSG: $IMAGE $(echo "$key" | cut -c1-12)); $SMOKE_MSG"
}

case $ACTION in
    start) do_start ;;
    stop) need_root; do_stop ;;
    status) _REPORTED=1; do_status ;;
    *) usage_error ;;
esac
