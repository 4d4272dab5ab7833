"""The Kubernetes manifests, validated offline against a pinned Kubernetes version's schemas."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from dataflows.settings import BookingSettings, MovieImpressionsSettings
from tests.conftest import FLOWS, ROOT

KUBERNETES_VERSION = "1.32.0"
JOBS = {"movie-impressions": MovieImpressionsSettings, "booking-correlation": BookingSettings}


def documents(job: str) -> dict[str, dict]:
    """kind -> resource, for the files the job's kustomization lists."""
    folder = ROOT / "k8s" / job
    listed = yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")
    return {doc["kind"]: doc for name in listed for doc in yaml.safe_load_all((folder / name).read_text())}


@pytest.mark.parametrize("job", JOBS)
def test_every_manifest_is_valid_for_the_pinned_kubernetes(job: str) -> None:
    for kind, doc in documents(job).items():
        if kind == "PodMonitor":  # a Prometheus Operator CRD: not in Kubernetes' schemas
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            assert doc["spec"]["podMetricsEndpoints"][0]["port"] == "api"
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("job", JOBS)
def test_statefulset_runs_what_the_tests_run(job: str) -> None:
    docs = documents(job)
    pod = docs["StatefulSet"]["spec"]["template"]["spec"]
    [process] = pod["containers"]
    assert process["command"][1:] == ["-m", "bytewax.run", FLOWS[job]]
    env = {e["name"]: e.get("value") for e in process["env"]}
    replicas = docs["StatefulSet"]["spec"]["replicas"]
    hostfile = docs["ConfigMap"]["data"]["hostfile"].split()
    assert hostfile == [f"{job}-{i}.{job}:9999" for i in range(replicas)]
    init_env = {e["name"]: e.get("value") for e in pod["initContainers"][0]["env"]}
    assert int(init_env["BYTEWAX_RECOVERY_PARTS"]) == replicas
    assert env["BYTEWAX_RECOVERY_DIRECTORY"] == init_env["BYTEWAX_RECOVERY_DIRECTORY"]
    assert docs["StatefulSet"]["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "recovery"
    assert docs["Service"]["spec"]["clusterIP"] == "None"
    # One volume per pod: the pods agree on the resume epoch through pod 0 (connectors/rendezvous.py).
    ports = {p["name"]: p["containerPort"] for p in process["ports"]}
    assert ports["rendezvous"] == int(env["RECOVERY_RENDEZVOUS_PORT"]) != ports["timely"]
    assert {"port": ports["rendezvous"], "name": "rendezvous", "targetPort": "rendezvous"} in docs["Service"]["spec"][
        "ports"
    ]
    for container in [process, *pod["initContainers"]]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("job", JOBS)
def test_configmap_holds_only_valid_settings(job: str) -> None:
    data = {k: v for k, v in documents(job)["ConfigMap"]["data"].items() if k != "hostfile"}
    JOBS[job].from_env(data)  # raises ConfigError on a bad value


def test_image_is_the_pinned_official_one_run_as_non_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    # The base is an ARG (a stand-in with the same layout where the official one cannot be pulled).
    assert "ARG BASE_IMAGE=bytewax/bytewax:0.21.1-python3.11\nFROM ${BASE_IMAGE}\n" in dockerfile
    assert "USER 10001" in dockerfile
    assert '"bytewax[kafka]==0.21.1"' in (ROOT / "pyproject.toml").read_text()


def test_deploy_script_is_what_make_deploy_runs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "k8s/deploy.sh $(JOB)" in makefile
    assert Path(ROOT / "k8s" / "deploy.sh").stat().st_mode & 0o111
