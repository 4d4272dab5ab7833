#!/usr/bin/env bash
# `make image`: the job image with buildah (no Docker daemon needed).
#
#   image/build.sh [TAG]       # default localhost/waxstreams:latest
#
# The base is BASE_IMAGE (default: the official bytewax/bytewax:0.21.1-python3.11) when
# it is present or can be pulled; otherwise a stand-in with the same layout is built
# from Debian's packages (image/build-base.sh) and used instead. Installs buildah and
# debootstrap with apt-get when they are missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${1:-${IMAGE:-localhost/waxstreams:latest}}
BASE_IMAGE=${BASE_IMAGE:-bytewax/bytewax:0.21.1-python3.11}
LOCAL_BASE=localhost/waxstreams-base:0.21.1-python3.11

if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "image: buildah and debootstrap are missing: run as root, or apt-get install buildah debootstrap" >&2
        exit 1
    fi
    echo "installing buildah and debootstrap (apt-get)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q buildah debootstrap >/dev/null
fi

if buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1 || buildah pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    base=$BASE_IMAGE
else
    echo "base $BASE_IMAGE cannot be pulled: using the local stand-in $LOCAL_BASE"
    image/build-base.sh "$LOCAL_BASE"
    base=$LOCAL_BASE
fi

# The optional native Kafka reader: the wheel `make install` built here (this host's glibc must
# not be newer than the base's: Debian 12, 2.36), else none and KAFKA_READER=auto falls back.
rm -f image/native-wheel/*.whl
trap 'rm -f image/native-wheel/*.whl' EXIT
native="without the native Kafka reader (no .cache/native-wheel: make install with cargo on PATH builds it)"
if compgen -G ".cache/native-wheel/*.whl" >/dev/null; then
    cp .cache/native-wheel/*.whl image/native-wheel/
    native="with the native Kafka reader ($(basename .cache/native-wheel/*.whl))"
fi

# pip inside the build trusts what this machine trusts (a TLS-inspecting proxy's CA, say);
# passed as a build secret, so it is in no layer.
ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
secret=()
if [ -s "$ca" ]; then secret=(--secret "id=pip_ca,src=$ca"); fi

buildah bud --quiet --isolation chroot --layers --build-arg "BASE_IMAGE=$base" "${secret[@]}" -t "$TAG" . >/dev/null
echo "built $TAG on $base, $native ($(buildah images --format '{{.Size}}' "$TAG" | head -1))"
