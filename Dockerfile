# The project on the pinned official bytewax image (Python 3.11, bytewax 0.21.1 in /venv,
# /bytewax/entrypoint.sh kept so waxctl and the bytewax Helm chart can run it too).
# BASE_IMAGE: where that image cannot be pulled, `make image` builds a stand-in with the
# same layout from Debian's packages (image/build-base.sh) and passes it here.
ARG BASE_IMAGE=bytewax/bytewax:0.21.1-python3.11
FROM ${BASE_IMAGE}

WORKDIR /bytewax
COPY pyproject.toml README.md ./
COPY dataflows/ dataflows/
COPY connectors/ connectors/
COPY producers/ producers/
COPY devstack/ devstack/
COPY bench/ bench/
# The optional native Kafka reader: the wheel `make install` built on the host, which
# image/build.sh puts here (none: the image reads Kafka with confluent-kafka).
COPY image/native-wheel/ /tmp/native-wheel/
# Runtime dependencies only (no [dev] extra). The optional build secret `pip_ca` is a CA
# bundle for pip (a TLS-inspecting proxy's, say): used for this step, never stored.
RUN --mount=type=secret,id=pip_ca,required=false \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && /venv/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && if ls /tmp/native-wheel/*.whl >/dev/null 2>&1; then \
        { /venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps /tmp/native-wheel/*.whl \
          && /venv/bin/python -c 'import sys; from connectors.transports import kafka_native as k; sys.exit(k.unavailable())'; } \
        || { echo "the native Kafka reader (.cache/native-wheel) does not work on this base: rebuild it with make install, or delete .cache/native-wheel to build without it" >&2; exit 1; }; \
    fi \
 && rm -rf /tmp/native-wheel dataflows connectors producers devstack bench pyproject.toml README.md build *.egg-info \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin bytewax \
 && mkdir -p /var/bytewax/recovery && chown 10001:10001 /var/bytewax/recovery

# Read-only root filesystem: no .pyc writes, the dataflow API's dataflow.json in /tmp (bytewax
# writes it to the working directory otherwise); /tmp and the recovery volume are mounted writable.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BYTEWAX_WORKDIR=/bytewax \
    BYTEWAX_DATAFLOW_API_ENABLED=true \
    BYTEWAX_DATAFLOW_API_CACHE_PATH=/tmp \
    BYTEWAX_RECOVERY_DIRECTORY=/var/bytewax/recovery

USER 10001
# 9999: timely cluster traffic between processes; 3030: bytewax API and /metrics.
EXPOSE 9999 3030
ENTRYPOINT ["/venv/bin/python", "-m", "bytewax.run"]
CMD ["dataflows.movie_impressions:flow"]
