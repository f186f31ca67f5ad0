#!/bin/bash
# tests/vm/build.sh - build (idempotently) the qemu guest that gives the tests a real IPVS kernel.
#
# The host kernel may lack IPVS. This builds, into a cache directory, everything tests/vm/vm-run
# needs to boot Debian's stock kernel (linux-image-amd64 ships ip_vs and its schedulers) under
# qemu with the host's / shared read-only over virtio-9p:
#   $DIR/kernel/          the kernel package, unpacked (never installed system-wide)
#   $DIR/vmlinux          uncompressed ELF kernel (qemu boots it directly: no xz under TCG)
#   $DIR/initrd.img       busybox + the 9p/overlay modules + tests/vm/init
#   $DIR/vm.conf          KVER, KERNEL, INITRD, MODDIR for vm-run
# DIR = $HACONTROL_VM_DIR, default /var/cache/hacontrol-vm. Re-running does only what is missing
# (the initramfs is rebuilt when tests/vm/init changes). --clean removes DIR first.
# Needs root (apt-get) only when packages are missing. Exit status 0 = ready.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${HACONTROL_VM_DIR:-/var/cache/hacontrol-vm}
if [ "${1:-}" = --clean ]; then rm -rf "$DIR"; fi
mkdir -p "$DIR/debs"
log() { echo "[vm-build] $*" >&2; }
die() { echo "[vm-build] ERROR: $*" >&2; exit 1; }

# 1. host packages
PKGS="qemu-system-x86 ipvsadm busybox-static kmod cpio xz-utils"
missing=$(for p in $PKGS; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'ok installed' || echo "$p"; done)
if [ -n "$missing" ]; then
  log "installing:" $missing
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $missing >/dev/null; } ||
    die "apt-get install $missing failed"
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found after install"

# 2. the kernel package that linux-image-amd64 points at (downloaded, unpacked, not installed)
kpkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
PKG=$(kpkg)
[ -n "$PKG" ] || { apt-get update -q >/dev/null 2>&1 || true; PKG=$(kpkg); }
[ -n "$PKG" ] || die "apt-cache knows no linux-image-amd64 dependency (is this Debian with apt sources?)"
KVER=${PKG#linux-image-}
MODDIR=$DIR/kernel/lib/modules/$KVER
if [ ! -f "$MODDIR/modules.dep" ]; then
  log "downloading $PKG"
  rm -f "$DIR"/debs/*.deb
  (cd "$DIR/debs" && apt-get download "$PKG" 2>&1 | grep -v unsandboxed >&2 || true)
  deb=$(ls "$DIR"/debs/"$PKG"_*.deb 2>/dev/null | head -1)
  [ -n "$deb" ] || die "apt-get download $PKG produced no .deb"
  rm -rf "$DIR/kernel"
  dpkg-deb -x "$deb" "$DIR/kernel"
  depmod -b "$DIR/kernel" "$KVER"
fi
[ -f "$MODDIR/kernel/net/netfilter/ipvs/ip_vs.ko" ] || [ -n "$(find "$MODDIR" -name 'ip_vs.ko*' | head -1)" ] ||
  die "kernel $KVER has no ip_vs module"

# 3. uncompressed vmlinux (PVH boot); fall back to the bzImage if extraction fails
if [ ! -s "$DIR/vmlinux" ]; then
  bz=$DIR/kernel/boot/vmlinuz-$KVER
  off=$(grep -abo $'\xfd7zXZ\x00' "$bz" | head -1 | cut -d: -f1 || true)
  if [ -n "$off" ]; then
    tail -c +$((off + 1)) "$bz" | xz -dc > "$DIR/vmlinux.tmp" 2>/dev/null || true  # trailing data is normal
  fi
  if [ -s "$DIR/vmlinux.tmp" ] && [ "$(head -c4 "$DIR/vmlinux.tmp" | od -An -c | tr -d ' ')" = '177ELF' ]; then
    mv "$DIR/vmlinux.tmp" "$DIR/vmlinux"
  else
    rm -f "$DIR/vmlinux.tmp"; cp "$bz" "$DIR/vmlinux"
  fi
fi

# 4. initramfs: static busybox, the modules needed to mount the host root, our init
stamp=$( { sha256sum "$HERE/init" /bin/busybox; echo "$KVER"; } | sha256sum | cut -c1-16)
if [ ! -s "$DIR/initrd.img" ] || [ "$(cat "$DIR/initrd.stamp" 2>/dev/null)" != "$stamp" ]; then
  R=$DIR/initramfs.d
  rm -rf "$R"; mkdir -p "$R/bin" "$R/mods"
  cp /bin/busybox "$R/bin/busybox"
  install -m 755 "$HERE/init" "$R/init"
  for m in virtio_pci 9pnet_virtio 9p overlay; do
    modprobe -d "$DIR/kernel" -S "$KVER" --show-depends "$m" | awk '$1=="insmod"{print $2}'
  done | awk '!seen[$0]++' > "$R/mods/list"
  while read -r ko; do
    n=$(basename "$ko"); n=${n%%.ko*}
    case "$ko" in
      *.xz) xz -dc "$ko" > "$R/mods/$n.ko";;
      *.zst) zstd -qdc "$ko" > "$R/mods/$n.ko";;
      *) cp "$ko" "$R/mods/$n.ko";;
    esac
    echo "$n"
  done < "$R/mods/list" > "$R/mods/order"
  (cd "$R" && find . | cpio -o -H newc --quiet) > "$DIR/initrd.tmp"
  mv "$DIR/initrd.tmp" "$DIR/initrd.img"
  echo "$stamp" > "$DIR/initrd.stamp"
  rm -rf "$R"
fi
printf 'KVER=%q\nKERNEL=%q\nINITRD=%q\nMODDIR=%q\n' "$KVER" "$DIR/vmlinux" "$DIR/initrd.img" "$MODDIR" \
  > "$DIR/vm.conf.tmp"
mv "$DIR/vm.conf.tmp" "$DIR/vm.conf"
log "ready: kernel $KVER in $DIR"
