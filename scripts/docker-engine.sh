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
#   AVE_DEBIAN_MIRROR  mirror for debootstrap (default: the one this machine's apt sources name;
#                      none there and none given is an error)
#   AVE_APT_DIR        where the apt sources are read (default: /etc/apt)
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

# The Debian mirror this machine's apt sources name, for debootstrap: deb822 files
# ($APT_DIR/sources.list.d/*.sources, `URIs:` of a paragraph whose `Types:` has deb and which is
# not `Enabled: no`) and one-line files ($APT_DIR/sources.list, sources.list.d/*.list). Preferred:
# an entry for the suite debootstrap makes ($SUITE); else one whose URI ends in /debian (a Debian
# archive carries every release). Only http, https and file URIs (what debootstrap can fetch).
# Prints "SUITE URI" for every entry; the choice is below. No host is written into this script:
# a machine whose sources name no mirror gets one line saying so.
APT_DIR="${AVE_APT_DIR:-/etc/apt}"
SUITE=bookworm

apt_entries() {
    local files=()
    [[ -f "$APT_DIR/sources.list" ]] && files+=("$APT_DIR/sources.list")
    local f
    for f in "$APT_DIR"/sources.list.d/*.list "$APT_DIR"/sources.list.d/*.sources; do
        [[ -f "$f" ]] && files+=("$f")
    done
    ((${#files[@]})) || return 0
    awk '
        function emit(suites, uris,    ns, nu, s, u, i, j) {
            ns = split(suites, s, /[ \t]+/); nu = split(uris, u, /[ \t]+/)
            for (i = 1; i <= ns; i++) for (j = 1; j <= nu; j++)
                if (s[i] != "" && u[j] ~ /^(https?|file):/) print s[i], u[j]
        }
        function flush() {  # the end of a deb822 paragraph
            if ((" " types " ") ~ / deb / && enabled !~ /^(no|false|0)$/) emit(suites, uris)
            types = uris = suites = enabled = field = ""
        }
        FNR == 1 { flush(); deb822 = FILENAME ~ /\.sources$/ }
        /^[ \t]*#/ { next }
        !deb822 {  # deb [options] URI SUITE COMPONENT...
            if ($1 != "deb") next
            i = 2
            if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
            if (i + 1 <= NF) emit($(i + 1), $i)
            next
        }
        /^[ \t]*$/ { flush(); next }
        /^[ \t]/ {  # a continuation line of the field before
            if (field == "types") types = types " " $0
            else if (field == "uris") uris = uris " " $0
            else if (field == "suites") suites = suites " " $0
            next
        }
        {
            field = tolower($1); sub(/:.*/, "", field)
            value = $0; sub(/^[^:]*:[ \t]*/, "", value)
            if (field == "types") types = value
            else if (field == "uris") uris = value
            else if (field == "suites") suites = value
            else if (field == "enabled") enabled = tolower(value)
        }
        END { flush() }
    ' "${files[@]}"
}

debian_mirror() {
    if [[ -n "${AVE_DEBIAN_MIRROR:-}" ]]; then
        echo "$AVE_DEBIAN_MIRROR"
        return
    fi
    local entries uri
    entries="$(apt_entries)"
    uri="$(awk -v suite="$SUITE" '$1 == suite { print $2; exit }' <<<"$entries")"
    [[ -n "$uri" ]] || uri="$(awk '$2 ~ /\/debian\/?$/ { print $2; exit }' <<<"$entries")"
    [[ -n "$uri" ]] || die "no Debian mirror in the apt sources ($APT_DIR/sources.list, sources.list.d/*.list, *.sources); set AVE_DEBIAN_MIRROR=URL"
    echo "$uri"
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
    tarball="$CACHE/rootfs-$SUITE-python3-ca$(local_ca_hash).tar"
    if [[ ! -s "$tarball" ]]; then
        mirror="$(debian_mirror)"
        dir="$CACHE/rootfs-$SUITE"
        say "debootstrap $SUITE (minbase + python3) from $mirror into $dir"
        mkdir -p "$CACHE"
        rm -rf "$dir"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
            "$SUITE" "$dir" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
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

main() {
    SECONDS=0
    install_packages
    start_engine
    make_base_image
    check_run
    say "ready in ${SECONDS}s"
}

# Run when executed; when sourced (tests), only define the functions above.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
