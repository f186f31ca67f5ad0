#!/usr/bin/env bash
# tests/pkg/fresh_root.sh: a fresh Debian 12 root to install the hacontrol package into.
#
#   fresh_root.sh build [--force]     debootstrap bookworm minbase once into a cached tarball
#   fresh_root.sh create DIR          unpack a fresh copy of it into DIR (must not exist)
#   fresh_root.sh exec DIR CMD...     run CMD as root chrooted in DIR, in new mount + PID
#                                     namespaces (proc, sys, dev, a tmpfs /run); every process
#                                     started inside is killed when CMD ends
#   fresh_root.sh destroy DIR         delete DIR (refuses while anything is mounted under it)
#
# The root is what `debootstrap --variant=minbase` gives: no python, no systemd running, no
# nftables. It is the target a package's Depends must complete. The cache (the tarball, about
# 40 MB) is kept across runs under $HACONTROL_ROOT_CACHE (default /var/tmp/hacontrol-fresh-root).
#
# The mirror is this machine's own, read from its apt sources (`apt-get indextargets`, the entry
# serving bookworm main) unless HACONTROL_MIRROR says otherwise; `create` writes only that one
# source into the root, plus this machine's Acquire:: settings, resolv.conf and hosts, so apt
# inside reaches the mirror the way apt does here. Nothing of this machine is baked into the
# tarball. Needs: debootstrap, zstd (installed with apt-get when missing), unshare, chroot.
set -euo pipefail

SUITE=bookworm
ARCH=$(dpkg --print-architecture)
CACHE=${HACONTROL_ROOT_CACHE:-/var/tmp/hacontrol-fresh-root}
TARBALL=$CACHE/$SUITE-minbase-$ARCH.tar.zst

die() { echo "fresh_root.sh: $*" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || die "must run as root"

mirror() {
    local m=${HACONTROL_MIRROR:-}
    [[ -n $m ]] || m=$(apt-get indextargets --no-release-info \
        --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 2>/dev/null |
        awk -v s="$SUITE" '$2 == s && $3 == "main" { print $1; exit }')
    [[ -n $m ]] || die "no mirror serving $SUITE main in this machine's apt sources (set HACONTROL_MIRROR)"
    echo "${m%/}/"
}

apt_install() {  # apt_install PKG...: install the missing ones on this machine
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    echo "fresh_root.sh: apt-get install ${missing[*]}" >&2
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

mounts_under() { awk -v p="$1/" 'index($2 "/", p) == 1 { print $2 }' /proc/self/mounts; }

cmd_build() {
    if [[ -f $TARBALL && ${1:-} != --force ]]; then
        echo "$TARBALL"
        return 0
    fi
    apt_install debootstrap zstd debian-archive-keyring
    mkdir -p "$CACHE"
    local work
    work=$(mktemp -d "$CACHE/build.XXXXXX")
    # shellcheck disable=SC2064  # expand $work now
    trap "rm -rf --one-file-system '$work' '$TARBALL.tmp'" EXIT
    # In its own mount + PID namespaces: the proc/sys mounts debootstrap makes vanish with it.
    unshare --mount --propagation private --pid --fork --kill-child -- \
        debootstrap --variant=minbase --arch="$ARCH" --components=main \
        --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
        "$SUITE" "$work/root" "$(mirror)" >"$work/debootstrap.log" 2>&1 ||
        { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    local r=$work/root
    chroot "$r" apt-get clean
    rm -rf "$r"/var/lib/apt/lists/* "$r"/etc/apt/sources.list "$r"/etc/apt/sources.list.d/*
    mkdir -p "$r"/var/lib/apt/lists/partial
    : >"$r"/etc/resolv.conf
    echo fresh-root >"$r"/etc/hostname
    tar --numeric-owner --xattrs --acls -C "$r" -cf - . | zstd -q -T0 -3 -o "$TARBALL.tmp"
    mv -f "$TARBALL.tmp" "$TARBALL"
    echo "$TARBALL"
}

cmd_create() {
    local dir=${1:?usage: fresh_root.sh create DIR}
    [[ ! -e $dir ]] || die "$dir exists"
    [[ -f $TARBALL ]] || cmd_build >/dev/null
    mkdir -p "$dir"
    zstd -dc -T0 "$TARBALL" | tar --numeric-owner --xattrs --acls -xpf - -C "$dir"
    # How apt reaches the mirror here: the one Debian source, Acquire:: settings, name service.
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(mirror) $SUITE main" \
        >"$dir/etc/apt/sources.list"
    local f
    for f in /etc/apt/apt.conf.d/*; do
        [[ -f $f ]] && grep -q 'Acquire::' "$f" && cp -L "$f" "$dir/etc/apt/apt.conf.d/"
    done
    cat /etc/resolv.conf >"$dir/etc/resolv.conf" 2>/dev/null || true
    cat /etc/hosts >"$dir/etc/hosts"
    # No daemon may start from a maintainer script inside (policy-rc.d, as in Debian's images).
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
    chmod 0755 "$dir/usr/sbin/policy-rc.d"
}

INNER='
set -e
r=$1; shift
mount --bind "$r" "$r"
mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
mount -t sysfs -o nosuid,nodev,noexec sysfs "$r/sys"
mount --rbind /dev "$r/dev"
mount --make-rslave "$r/dev"
mount -t tmpfs -o nosuid,nodev,mode=755 run "$r/run"
mkdir -p "$r/run/lock"
set +e
chroot "$r" "$@"
exit $?
'

cmd_exec() {
    local dir=${1:?usage: fresh_root.sh exec DIR CMD...}
    shift
    [[ -d $dir/etc ]] || die "$dir is not a root"
    local envv=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
                LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive)
    local v
    for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
        [[ -n ${!v:-} ]] && envv+=("$v=${!v}")
    done
    unshare --mount --propagation private --pid --fork --kill-child -- \
        /bin/bash -c "$INNER" inner "$(cd "$dir" && pwd)" /usr/bin/env -i "${envv[@]}" "$@"
}

cmd_destroy() {
    local dir=${1:?usage: fresh_root.sh destroy DIR}
    [[ -e $dir ]] || return 0
    [[ -z $(mounts_under "$(cd "$dir" && pwd)") ]] || die "mounts left under $dir, not deleting it"
    rm -rf --one-file-system "$dir"
}

cmd=${1:-}
shift || true
case $cmd in
    build) cmd_build "$@" ;;
    create) cmd_create "$@" ;;
    exec) cmd_exec "$@" ;;
    destroy) cmd_destroy "$@" ;;
    *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
