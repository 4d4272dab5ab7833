"""Where a cluster's process count comes from (connectors/autoscale_start.py's `CLUSTER_REPLICAS`).

- `statefulset`: the pod's StatefulSet's `spec.replicas` (what an HPA or KEDA sets), read
  from the Kubernetes API with the pod's service account (k8s/<job>/rbac.yaml);
- `file:PATH`: `{"replicas": N, "id": ...}`, written by the local supervisor (devstack/autoscale.py);
- a number: a fixed count.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from connectors.errors import WaxstreamsError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ReplicasError(WaxstreamsError, RuntimeError):
    """`CLUSTER_REPLICAS` or what it needs is wrong; the message names the setting and the fix."""


class Replicas(Protocol):
    def count(self) -> int: ...

    def identity(self) -> str | None:
        """Names this cluster the same for every process (None: unknown)."""
        ...


@dataclass
class FixedReplicas:
    replicas: int

    def count(self) -> int:
        return self.replicas

    def identity(self) -> str | None:
        return None


@dataclass
class FileReplicas:
    """`{"replicas": N, "id": "..."}`, replaced atomically by whoever decides (devstack/autoscale.py)."""

    path: Path

    def _read(self) -> dict:
        return json.loads(self.path.read_text())

    def count(self) -> int:
        return int(self._read()["replicas"])

    def identity(self) -> str | None:
        return self._read().get("id")


@dataclass
class StatefulSetReplicas:
    """`spec.replicas` of the StatefulSet, read with the pod's service account token (re-read
    each time: projected tokens rotate). Needs `get` on it (k8s/<job>/rbac.yaml)."""

    api: str  # https://host:port
    namespace: str
    name: str
    token_file: Path | None
    ca_file: Path | None
    timeout_s: float = 10.0

    def _get(self) -> dict:
        url = f"{self.api}/apis/apps/v1/namespaces/{self.namespace}/statefulsets/{self.name}"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if self.token_file is not None:
            request.add_header("Authorization", "Bearer " + self.token_file.read_text().strip())
        context = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None
        with urllib.request.urlopen(request, timeout=self.timeout_s, context=context) as response:
            return json.load(response)

    def count(self) -> int:
        return int(self._get()["spec"]["replicas"])

    def identity(self) -> str | None:
        meta = self._get()["metadata"]
        created = datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00"))
        return f"{created:%Y%m%dT%H%M%SZ}-{meta['uid'].replace('-', '')[:6]}"


def replicas_from(environ: Mapping[str, str]) -> Replicas:
    setting = environ.get("CLUSTER_REPLICAS", "").strip()
    if setting == "statefulset":
        name = environ.get("BYTEWAX_STATEFULSET_NAME", "").strip()
        if not name:
            msg = "CLUSTER_REPLICAS=statefulset needs BYTEWAX_STATEFULSET_NAME (the StatefulSet's name)"
            raise ReplicasError(msg)
        api = environ.get("CLUSTER_API_URL", "").strip()
        if not api:
            host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                msg = "CLUSTER_REPLICAS=statefulset outside Kubernetes: set CLUSTER_API_URL, or a number or file:PATH"
                raise ReplicasError(msg)
            api = f"https://{host}:{port}"
        namespace = environ.get("CLUSTER_NAMESPACE", "").strip()
        if not namespace:
            try:
                namespace = (SERVICE_ACCOUNT / "namespace").read_text().strip()
            except OSError:
                msg = (
                    f"no service account at {SERVICE_ACCOUNT}: mount its token (automountServiceAccountToken: true, "
                    "k8s/<job>/statefulset.yaml) or set CLUSTER_NAMESPACE"
                )
                raise ReplicasError(msg) from None
        token = SERVICE_ACCOUNT / "token"
        ca = SERVICE_ACCOUNT / "ca.crt"
        return StatefulSetReplicas(
            api.rstrip("/"),
            namespace,
            name,
            token if token.exists() else None,
            ca if ca.exists() and api.startswith("https:") else None,
        )
    if setting.startswith("file:"):
        return FileReplicas(Path(setting.removeprefix("file:")))
    if setting.isdigit() and int(setting) >= 1:
        return FixedReplicas(int(setting))
    msg = f"CLUSTER_REPLICAS={setting!r}: set it to statefulset (in a pod), file:PATH or a process count"
    raise ReplicasError(msg)
