#!/usr/bin/env bash
# Prepare a Docker engine on this machine kind (DESIGN.md section 6), for CI and developers.
#
#   sudo bash scripts/docker-engine.sh        # as root; .ci/run calls it before `make test`
#
# Idempotent; each step is skipped when already done:
#   1. apt-get install docker.io and debootstrap, if dockerd or debootstrap is missing;
#   2. start `dockerd --storage-driver=DRIVER --iptables=false --bridge=none` if no engine answers
#      `docker info`, and wait (bounded) until it does. DRIVER is overlay2 when this kernel can
#      mount an overlay on /var/lib (it can on this machine kind), else vfs (DESIGN.md section 6).
#      Why not vfs always: vfs copies the whole image for every container and build step, so
#      each `docker run` of the 1 GB trainer image took 41 s here against 0.4 s on overlay2;
#   3. if the image that the Dockerfile's first FROM names is missing (no registry is reachable
#      here), make it: debootstrap a minimal bookworm with python3, python3-venv, ca-certificates
#      and passwd, then `docker import` it under that tag. The certificate authorities this
#      machine adds to its trust store (/usr/local/share/ca-certificates) are added inside too, so
#      that pip in a build trusts what pip here trusts (a TLS-inspecting proxy, say); the
#      Dockerfile stays the same as for the official image. The root file system is cached as a
#      tarball under $AVE_DOCKER_CACHE, so a rerun on the same machine only re-imports it.
# Builds and runs on this engine need `--network host` (there is no bridge).
#
# Environment (all optional):
#   AVE_BASE_IMAGE     tag to make (default: the first FROM of ./Dockerfile)
#   AVE_DOCKER_CACHE   cache folder (default: /var/cache/av-emotion)
#   AVE_DEBIAN_MIRROR  mirror for debootstrap (default: the one apt is configured with)
#   AVE_DOCKERD_WAIT   seconds to wait for the engine (default: 60)
#   AVE_DOCKER_STORAGE_DRIVER  overlay2 or vfs (default: overlay2 if it mounts, else vfs)
# Exit status: 0 when the engine answers, the base image exists and a container from it runs;
# 1 otherwise, with a message.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${AVE_DOCKER_CACHE:-/var/cache/av-emotion}"
WAIT="${AVE_DOCKERD_WAIT:-60}"
LOG="/var/log/dockerd-av-emotion.log"

say() { echo "docker-engine: $*"; }
die() { echo "docker-engine: ERROR: $*" >&2; exit 1; }

# The tag the Dockerfile builds FROM, so that the same Dockerfile works here and on a machine
# that reaches Docker Hub.
base_image() {
    if [[ -n "${AVE_BASE_IMAGE:-}" ]]; then
        echo "$AVE_BASE_IMAGE"
    elif [[ -f "$ROOT/Dockerfile" ]]; then
        awk 'toupper($1) == "FROM" { for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; exit } }' \
            "$ROOT/Dockerfile"
    else
        echo "python:3.11-slim-bookworm"
    fi
}

# The Debian mirror apt uses here (deb822 .sources or one-line sources.list), never -security.
debian_mirror() {
    if [[ -n "${AVE_DEBIAN_MIRROR:-}" ]]; then
        echo "$AVE_DEBIAN_MIRROR"
        return
    fi
    local uri
    uri="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '$1 == "URIs:" { for (i = 2; i <= NF; i++) print $i }' \
        | grep -E '/debian/?$' | head -n 1 || true)"
    if [[ -z "$uri" ]]; then
        uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; break } }' \
            | grep -E '/debian/?$' | head -n 1 || true)"
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

# Can this kernel mount an overlay file system where the engine keeps its layers?
overlay_mounts() {
    local probe ok=1
    grep -qw overlay /proc/filesystems || modprobe overlay >/dev/null 2>&1 || true
    grep -qw overlay /proc/filesystems || return 1
    mkdir -p /var/lib/docker
    probe="$(mktemp -d /var/lib/docker/.overlay-probe.XXXXXX)"
    mkdir "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
    if mount -t overlay overlay \
        -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" 2>/dev/null; then
        umount "$probe/merged" && ok=0
    fi
    rm -rf "$probe"
    return "$ok"
}

storage_driver() {
    if [[ -n "${AVE_DOCKER_STORAGE_DRIVER:-}" ]]; then
        echo "$AVE_DOCKER_STORAGE_DRIVER"
    elif overlay_mounts; then
        echo overlay2
    else
        echo vfs
    fi
}

install_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    if ((${#missing[@]} == 0)); then
        say "dockerd and debootstrap are installed"
        return
    fi
    [[ $EUID -eq 0 ]] || die "installing ${missing[*]} needs root (run with sudo)"
    say "installing ${missing[*]} (apt-get)"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >/dev/null || die "apt-get install ${missing[*]} failed"
}

start_engine() {
    if engine_answers; then
        say "an engine already answers: $(docker info --format '{{.ServerVersion}} ({{.Driver}})' 2>/dev/null)"
        return
    fi
    [[ $EUID -eq 0 ]] || die "no Docker engine answers and starting dockerd needs root"
    if pgrep -x dockerd >/dev/null; then
        say "dockerd is running but does not answer yet; waiting"
    else
        local driver
        driver="$(storage_driver)"
        say "starting dockerd ($driver, no iptables, no bridge); log: $LOG"
        # setsid: the engine outlives this script and the shell job that ran it.
        setsid dockerd --storage-driver="$driver" --iptables=false --bridge=none \
            >>"$LOG" 2>&1 </dev/null &
    fi
    local waited=0
    until engine_answers; do
        if ((waited >= WAIT)); then
            tail -n 20 "$LOG" >&2 2>/dev/null || true
            die "no Docker engine answered 'docker info' after ${WAIT}s (see $LOG)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "engine answers after ${waited}s: $(docker info --format '{{.ServerVersion}} ({{.Driver}})')"
}

# Certificate authorities added on this machine, and a short hash of them for the cache name.
LOCAL_CAS=/usr/local/share/ca-certificates
local_ca_hash() {
    find "$LOCAL_CAS" -name '*.crt' -type f -print0 2>/dev/null | sort -z | xargs -0r cat \
        | sha256sum | cut -c1-12
}

make_base_image() {
    local tag tarball mirror dir
    tag="$(base_image)"
    if docker image inspect "$tag" >/dev/null 2>&1; then
        say "base image $tag exists"
        return
    fi
    tarball="$CACHE/rootfs-bookworm-python3-ca$(local_ca_hash).tar"
    if [[ ! -s "$tarball" ]]; then
        mirror="$(debian_mirror)"
        dir="$CACHE/rootfs-bookworm"
        say "debootstrap bookworm (minbase + python3) from $mirror into $dir"
        mkdir -p "$CACHE"
        rm -rf "$dir"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
            bookworm "$dir" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (see $CACHE/debootstrap.log)"; }
        if compgen -G "$LOCAL_CAS/*.crt" >/dev/null; then
            say "adding this machine's certificate authorities: $(cd "$LOCAL_CAS" && echo ./*.crt)"
            cp "$LOCAL_CAS"/*.crt "$dir/usr/local/share/ca-certificates/"
            chroot "$dir" update-ca-certificates >>"$CACHE/debootstrap.log" 2>&1 || die "update-ca-certificates failed"
        fi
        # What a slim image leaves out: package caches and lists, docs.
        rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
            "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/locale/*
        tar -C "$dir" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$dir"
    else
        say "using cached root file system $tarball"
    fi
    say "importing $tarball as $tag"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        "$tarball" "$tag" >/dev/null || die "docker import failed"
    say "base image $tag made ($(docker image inspect -f '{{.Size}}' "$tag") bytes)"
}

# The engine can start a container from the base image (catches a storage driver that starts
# but cannot mount).
check_run() {
    local tag
    tag="$(base_image)"
    docker run --rm --network host "$tag" true >/dev/null 2>&1 \
        || die "the engine cannot run a container from $tag (see $LOG; AVE_DOCKER_STORAGE_DRIVER=vfs is the fallback)"
    say "a container from $tag runs"
}

SECONDS=0
install_packages
start_engine
make_base_image
check_run
say "ready in ${SECONDS}s"
