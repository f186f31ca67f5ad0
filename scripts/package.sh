#!/usr/bin/env bash
# scripts/package.sh: build the Debian package and the wheel into dist/ (`bash scripts/dev package`).
#
#   dist/hacontrol-VERSION-py3-none-any.whl   for pip / pipx users (no dependencies inside)
#   dist/hacontrol_VERSION_ARCH.deb           for Debian 12 directors, self-contained:
#     /opt/hacontrol                          a venv with hacontrol and its Python libraries, on
#                                             Debian's /usr/bin/python3.11 (Depends: python3.11)
#     /usr/bin/hacontrol                      -> /opt/hacontrol/bin/hacontrol
#     /lib/systemd/system/hacontrol.service   the unit (User=hacontrol, CAP_NET_ADMIN CAP_NET_RAW)
#     /usr/lib/tmpfiles.d/hacontrol.conf      /run/hacontrol
#     /usr/lib/modules-load.d/hacontrol.conf  ip_vs, its schedulers, nf_conntrack at boot
#     /usr/lib/sysctl.d/60-hacontrol.conf     ip_forward, IPVS conntrack (DR ones commented)
#     /etc/hacontrol/hacontrol.yaml           example config (conffile); postinst adds ha.key and
#                                             api.token when absent, and the user hacontrol
#     /usr/share/doc/hacontrol/               install.md, config.md, api.md, copyright
#
# Run as root on Debian 12 (dpkg-deb --root-owner-group: no fakeroot). Needs python3.11 with
# venv (python3-venv) and a reachable package index for pip (the same one `scripts/dev deps`
# uses). Environment: DIST (default dist).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# Nothing of the caller's Python environment may leak in (a PYTHONPATH naming this checkout makes
# pip think hacontrol is already installed, and installs nothing).
unset PYTHONPATH PYTHONHOME PYTHONUSERBASE PYTHONSTARTUP VIRTUAL_ENV PIP_TARGET PIP_PREFIX PIP_USER
export PYTHONNOUSERSITE=1
PYTHON=/usr/bin/python3.11  # what the target has: the venv links to it by this path
DIST=${DIST:-$ROOT/dist}
PREFIX=/opt/hacontrol

# pip's output goes to a log, shown when a step fails.
pip_q() { "$@" >>"$WORK/pip.log" 2>&1 || { tail -n 30 "$WORK/pip.log" >&2; die "failed: $*"; }; }
log() { printf '[package] %s\n' "$*" >&2; }
die() { printf 'package.sh: %s\n' "$*" >&2; exit 1; }

[[ -x $PYTHON ]] || die "$PYTHON not found (the package runs on Debian 12's python3.11)"
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ $PYVER == 3.11 ]] || die "$PYTHON is Python $PYVER; the package Depends on python3.11"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (a Debian system is needed)"
VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
ARCH=$(dpkg --print-architecture)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hacontrol-package.XXXXXX")
trap 'rm -rf --one-file-system "$WORK"' EXIT
STAGE=$WORK/root
mkdir -p "$STAGE" "$DIST"

# --- the wheel ---------------------------------------------------------------------------------
log "wheel"
"$PYTHON" -m venv "$WORK/build-venv"
pip_q "$WORK/build-venv/bin/python" -m pip install -q --disable-pip-version-check build
# From a copy of the committed and working-tree files only (no .venv, dist/, caches).
mkdir "$WORK/src"
git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$WORK/src"
pip_q "$WORK/build-venv/bin/python" -m build -q --wheel --outdir "$WORK/wheel" "$WORK/src"
WHEEL=$(ls "$WORK"/wheel/hacontrol-"$VERSION"-*.whl)
cp "$WHEEL" "$DIST/.$(basename "$WHEEL").tmp" && mv -f "$DIST/.$(basename "$WHEEL").tmp" "$DIST/$(basename "$WHEEL")"

# --- the venv under /opt/hacontrol ---------------------------------------------------------------
log "venv $PREFIX (Python $PYVER)"
V=$STAGE$PREFIX
"$PYTHON" -m venv "$V"
# From $WORK: `python -m` puts the working directory on sys.path, and a hacontrol.egg-info left
# in the checkout by an editable install would count as hacontrol already installed.
(cd "$WORK" && pip_q "$V/bin/python" -m pip install -q --disable-pip-version-check --no-compile "$WHEEL")
"$V/bin/python" -m pip uninstall -q -y pip setuptools >/dev/null 2>&1 || true
# bin/: only hacontrol and the interpreter links (the libraries' own tools are not for operators).
find "$V/bin" -mindepth 1 ! -name hacontrol ! -name 'python*' -delete
find "$V" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$V" -name direct_url.json -delete
# Scripts and pyvenv.cfg name the venv by its path: make that the installed one.
grep -rlI --null -F "$STAGE" "$V" | xargs -0 -r sed -i "s|$STAGE||g"
# Byte code now, with the installed paths in it: the service cannot write /opt (ProtectSystem),
# and dpkg then owns every file it removes. Validated by the source's hash, not its mtime.
"$V/bin/python" -m compileall -q -j0 -s "$STAGE" -p / --invalidation-mode checked-hash \
    "$V/lib" >/dev/null
# The libraries' compiled extensions come with their debug symbols: not needed to run them.
if command -v strip >/dev/null; then
    find "$V" -name '*.so' -type f -exec strip --strip-unneeded {} +
fi
if grep -rlI -F "$WORK" "$STAGE" >/dev/null; then
    grep -rlI -F "$WORK" "$STAGE" >&2
    die "build paths left in the staged files (above)"
fi
[[ $(head -n1 "$V/bin/hacontrol") == "#!$PREFIX/bin/python" ]] || die "bad shebang in bin/hacontrol"
"$V/bin/python" -m hacontrol version >/dev/null || die "the staged venv does not run"

# --- system files --------------------------------------------------------------------------------
log "system files"
install -d "$STAGE/usr/bin" "$STAGE/lib/systemd/system" "$STAGE/usr/lib/tmpfiles.d" \
    "$STAGE/usr/lib/modules-load.d" "$STAGE/usr/lib/sysctl.d" "$STAGE/usr/share/doc/hacontrol"
install -d -m 0750 "$STAGE/etc/hacontrol"
ln -s "$PREFIX/bin/hacontrol" "$STAGE/usr/bin/hacontrol"
install -m 0644 deploy/hacontrol.service "$STAGE/lib/systemd/system/hacontrol.service"
install -m 0644 deploy/hacontrol.tmpfiles.conf "$STAGE/usr/lib/tmpfiles.d/hacontrol.conf"
install -m 0644 deploy/hacontrol.modules-load.conf "$STAGE/usr/lib/modules-load.d/hacontrol.conf"
install -m 0644 deploy/hacontrol.sysctl.conf "$STAGE/usr/lib/sysctl.d/60-hacontrol.conf"
install -m 0640 deploy/etc-hacontrol/hacontrol.yaml "$STAGE/etc/hacontrol/hacontrol.yaml"
install -m 0644 docs/install.md docs/config.md docs/api.md "$STAGE/usr/share/doc/hacontrol/"
install -m 0644 packaging/debian/copyright "$STAGE/usr/share/doc/hacontrol/copyright"
printf 'hacontrol (%s) unstable; urgency=medium\n\n  * Built by scripts/package.sh from %s.\n\n -- %s  %s\n' \
    "$VERSION" "$(git describe --always --dirty 2>/dev/null || echo 'a source tree')" \
    "$(sed -n 's/^Maintainer: //p' packaging/debian/control.in)" "$(date -R)" |
    gzip -9n >"$STAGE/usr/share/doc/hacontrol/changelog.gz"

# --- control files -------------------------------------------------------------------------------
log "control"
D=$STAGE/DEBIAN
install -d "$D"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$D/"
install -m 0644 packaging/debian/conffiles "$D/"
# The compiled extensions (aiohttp, uvloop, yaml, ...) need at most this glibc symbol version.
GLIBC=$(find "$V" -name '*.so*' -type f -print0 | xargs -0 -r grep -aoh 'GLIBC_2\.[0-9]*' |
    sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -u | tail -n1)
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" \
    -e "s/^Depends: /Depends: libc6 (>= ${GLIBC:-2.36}), /" \
    packaging/debian/control.in >"$D/control"
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' |
    LC_ALL=C sort -z | xargs -0 md5sum) >"$D/md5sums"

DEB=$DIST/hacontrol_${VERSION}_${ARCH}.deb
# Written aside and renamed: an interrupted build never leaves a fresh-looking partial .deb.
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$WORK/out.deb" >/dev/null
mv -f "$WORK/out.deb" "$DEB"
log "$(du -h "$DEB" | cut -f1) $DEB"
log "$(du -h "$DIST/$(basename "$WHEEL")" | cut -f1) $DIST/$(basename "$WHEEL")"
echo "$DEB"
