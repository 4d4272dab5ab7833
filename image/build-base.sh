#!/usr/bin/env bash
# A local stand-in for the official base image bytewax/bytewax:0.21.1-python3.11, for
# machines that cannot pull it: the same layout (Debian bookworm, its Python 3.11,
# bytewax 0.21.1 in the virtualenv /venv, work directory /bytewax with entrypoint.sh),
# built from Debian's packages with debootstrap and committed with buildah.
#
#   image/build-base.sh [TAG]      # default localhost/waxstreams-base:0.21.1-python3.11; no-op if it exists
#
# Needs root, debootstrap and buildah (`make image` installs them with apt-get).
set -euo pipefail

TAG=${1:-localhost/waxstreams-base:0.21.1-python3.11}
BYTEWAX_VERSION=0.21.1
SUITE=bookworm  # ships python3.11, the official image's Python
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_CA=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}

if buildah inspect --type image "$TAG" >/dev/null 2>&1; then
    echo "base image $TAG exists"
    exit 0
fi

work=$(mktemp -d /var/tmp/waxstreams-base.XXXXXX)
rootfs=$work/rootfs
cleanup() {
    if mountpoint -q "$rootfs/proc" 2>/dev/null; then umount "$rootfs/proc"; fi
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

echo "debootstrap $SUITE into $rootfs"
debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -30 "$work/debootstrap.log" "$rootfs/debootstrap/debootstrap.log" 2>/dev/null; exit 1; }

cp /etc/resolv.conf "$rootfs/etc/resolv.conf"  # apt and pip reach their registries from inside the chroot
mount -t proc proc "$rootfs/proc"
echo "python3.11 from Debian $SUITE, bytewax $BYTEWAX_VERSION into /venv"
chroot "$rootfs" apt-get update -q >"$work/apt.log" 2>&1 || { tail -20 "$work/apt.log"; exit 1; }
chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    python3.11 python3.11-venv ca-certificates >>"$work/apt.log" 2>&1 || { tail -30 "$work/apt.log"; exit 1; }
chroot "$rootfs" /usr/bin/python3.11 -m venv /venv
# pip trusts the CAs this machine trusts (a TLS-inspecting proxy's, say) for this step only.
cp "$HOST_CA" "$rootfs/tmp/host-ca.crt"
chroot "$rootfs" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PIP_CERT=/tmp/host-ca.crt \
    /venv/bin/pip install -q --no-cache-dir --disable-pip-version-check "bytewax==$BYTEWAX_VERSION"
rm "$rootfs/tmp/host-ca.crt"
umount "$rootfs/proc"

mkdir -p "$rootfs/bytewax"
cat >"$rootfs/bytewax/entrypoint.sh" <<'SH'
#!/bin/sh
# Stand-in for the official image's entrypoint: run a dataflow with bytewax.run.
exec /venv/bin/python -m bytewax.run "$@"
SH
chmod 755 "$rootfs/bytewax/entrypoint.sh"

# What a runtime image does not need: package lists and caches, docs, man pages, locales.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/tmp/*
: >"$rootfs/etc/resolv.conf"
# The venv's bytecode stays: the container's filesystem is read-only, so a pod without it
# would compile bytewax, polars and botocore again at every start.

ctr=$(buildah from scratch)
buildah copy --quiet "$ctr" "$rootfs" / >/dev/null
buildah config \
    --env PATH=/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --workingdir /bytewax \
    --entrypoint '["/bytewax/entrypoint.sh"]' \
    --label org.opencontainers.image.description="stand-in for bytewax/bytewax:$BYTEWAX_VERSION-python3.11 (Debian $SUITE, Python 3.11, /venv)" \
    "$ctr"
buildah commit --quiet --rm "$ctr" "$TAG" >/dev/null
echo "built base image $TAG"
