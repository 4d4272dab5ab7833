# The project on the pinned official bytewax image (Python 3.11, bytewax 0.21.1 in /venv,
# /bytewax/entrypoint.sh kept so waxctl and the bytewax Helm chart can run it too).
FROM bytewax/bytewax:0.21.1-python3.11

WORKDIR /bytewax
COPY pyproject.toml README.md ./
COPY dataflows/ dataflows/
COPY connectors/ connectors/
COPY producers/ producers/
COPY devstack/ devstack/
COPY bench/ bench/
RUN /venv/bin/pip install --no-cache-dir . \
 && rm -rf dataflows connectors producers devstack bench \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin bytewax

# Read-only root filesystem: no .pyc writes; /tmp and the recovery volume are mounted writable.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BYTEWAX_WORKDIR=/bytewax \
    BYTEWAX_DATAFLOW_API_ENABLED=true \
    BYTEWAX_RECOVERY_DIRECTORY=/var/bytewax/recovery

USER 10001
# 9999: timely cluster traffic between processes; 3030: bytewax API and /metrics.
EXPOSE 9999 3030
ENTRYPOINT ["/venv/bin/python", "-m", "bytewax.run"]
CMD ["dataflows.movie_impressions:flow"]
