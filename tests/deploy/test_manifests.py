"""The Kubernetes manifests, validated offline against a pinned Kubernetes version's schemas."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from connectors.autoscale_start import Settings, StartError, plan
from dataflows.settings import BookingSettings, MovieImpressionsSettings
from tests.support.jobs import FLOWS, ROOT

KUBERNETES_VERSION = "1.32.0"
# The HPA's per-direction `tolerance` (KDA's 10 % floor) is beta, on by default, from 1.35.
HPA_TOLERANCE_VERSION = "1.35.0"
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
        if kind == "HorizontalPodAutoscaler":
            kubernetes_validate.validate(doc, HPA_TOLERANCE_VERSION, strict=True)
            # Older clusters drop the tolerances (the default 10 % applies): the rest is valid there.
            older = copy.deepcopy(doc)
            for rules in older["spec"]["behavior"].values():
                del rules["tolerance"]
            kubernetes_validate.validate(older, KUBERNETES_VERSION, strict=True)
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("job", JOBS)
def test_statefulset_runs_what_the_tests_run(job: str) -> None:
    docs = documents(job)
    pod = docs["StatefulSet"]["spec"]["template"]["spec"]
    [process] = pod["containers"]
    assert process["command"][1:] == ["-m", "connectors.autoscale_start", FLOWS[job]]
    assert "initContainers" not in pod  # the start-up creates this pod's share of the store
    env = {e["name"]: e.get("value") for e in process["env"]}
    assert env["CLUSTER_REPLICAS"] == "statefulset" and env["BYTEWAX_STATEFULSET_NAME"] == job
    assert "hostfile" not in docs["ConfigMap"]["data"] and "BYTEWAX_HOSTFILE_PATH" not in env
    assert docs["StatefulSet"]["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "recovery"
    assert docs["Service"]["spec"]["clusterIP"] == "None"
    assert docs["StatefulSet"]["spec"]["serviceName"] == docs["Service"]["metadata"]["name"] == job
    # One volume per pod: the pods agree on the resume epoch through pod 0 (connectors/rendezvous.py).
    ports = {p["name"]: p["containerPort"] for p in process["ports"]}
    assert ports["rendezvous"] == int(env["RECOVERY_RENDEZVOUS_PORT"]) != ports["timely"]
    assert {"port": ports["rendezvous"], "name": "rendezvous", "targetPort": "rendezvous"} in docs["Service"]["spec"][
        "ports"
    ]
    assert env["CLUSTER_ADDRESSES"].endswith(f":{ports['timely']}")
    for container in [process, *pod.get("initContainers", [])]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("job", JOBS)
def test_each_pod_derives_the_cluster_from_the_manifests(job: str) -> None:
    """What connectors/autoscale_start.py makes of the manifest's settings in pod 2 of 3: the
    headless Service's names of pods 0..2, process id 2, and no partition (pods 0 and 1 hold them)."""
    docs = documents(job)
    [process] = docs["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in process["env"] if "value" in e}
    env["BYTEWAX_POD_NAME"] = f"{job}-2"  # what the fieldRef gives pod 2
    settings = Settings.from_env([FLOWS[job], "-w", "1"], env)
    cluster = plan(3, settings.ordinal, settings.address_spec, settings.partitions)
    service = docs["Service"]["metadata"]["name"]
    assert cluster.bytewax_args() == ["-a", ";".join(f"{job}-{i}.{service}:9999" for i in range(3)), "-i", "2"]
    assert not cluster.holds_partition and settings.directory == Path(env["BYTEWAX_RECOVERY_DIRECTORY"])
    with pytest.raises(StartError, match="BYTEWAX_RECOVERY_PARTS"):
        plan(docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"] - 1, 0, settings.address_spec, settings.partitions)


@pytest.mark.parametrize("job", JOBS)
def test_the_hpa_follows_managed_flinks_rule(job: str) -> None:
    docs = documents(job)
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    [process] = docs["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in process["env"]}
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": job}
    # Never below the pods that hold the store (KDA: never below the configured parallelism).
    assert hpa["minReplicas"] == int(env["BYTEWAX_RECOVERY_PARTS"]) == docs["StatefulSet"]["spec"]["replicas"]
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    [metric] = hpa["metrics"]
    assert metric["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 75}}
    assert process["resources"]["requests"]["cpu"] == "1"  # utilisation is of the request
    up, down = hpa["behavior"]["scaleUp"], hpa["behavior"]["scaleDown"]
    assert up["stabilizationWindowSeconds"] == 15 * 60 and float(up["tolerance"]) == 0
    assert up["policies"] == [{"type": "Percent", "value": 100, "periodSeconds": 900}]  # doubling
    assert down["stabilizationWindowSeconds"] == 3600  # the API's cap: KDA's 6 hours cannot be said
    assert down["policies"] == [{"type": "Percent", "value": 50, "periodSeconds": 1800}]  # halving
    tolerance = int(down["tolerance"].removesuffix("m")) / 1000
    assert 0.095 < 0.75 * (1 - tolerance) <= 0.10  # scales down only under 10 % CPU


@pytest.mark.parametrize("job", JOBS)
def test_the_pods_may_read_their_statefulset_and_nothing_else(job: str) -> None:
    docs = documents(job)
    pod = docs["StatefulSet"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    assert docs["Role"]["rules"] == [
        {"apiGroups": ["apps"], "resources": ["statefulsets"], "resourceNames": [job], "verbs": ["get"]}
    ]
    binding = docs["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": docs["Role"]["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"]}]


@pytest.mark.parametrize("job", JOBS)
def test_the_keda_overlay_scales_on_the_jobs_own_lag(job: str) -> None:
    """A KEDA CRD (not in Kubernetes' schemas): checked against the job's settings instead."""
    folder = ROOT / "k8s" / job / "keda"
    overlay = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["..", "scaledobject.yaml"]
    [patch] = overlay["patches"]
    removed = yaml.safe_load(patch["patch"])
    assert removed == {"$patch": "delete", "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                       "metadata": {"name": job}}  # fmt: skip
    scaled = yaml.safe_load((folder / "scaledobject.yaml").read_text())
    docs = documents(job)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert spec["minReplicaCount"] == docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"]
    behavior = {
        d: {k: v for k, v in r.items() if k != "tolerance"}
        for d, r in docs["HorizontalPodAutoscaler"]["spec"]["behavior"].items()
    }
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == behavior
    settings = docs["ConfigMap"]["data"]
    inputs = {k: v for k, v in settings.items() if k in ("IMPRESSIONS_TOPIC", "CREATED_TOPIC", "EVENTS_TOPIC")}
    assert {t["metadata"]["topic"] for t in spec["triggers"]} == set(inputs.values())
    for trigger in spec["triggers"]:
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == settings["CONSUMER_GROUP"]
        assert trigger["metadata"]["bootstrapServers"] == settings["KAFKA_BROKERS"]


@pytest.mark.parametrize("job", JOBS)
def test_configmap_holds_only_valid_settings(job: str) -> None:
    JOBS[job].from_env(documents(job)["ConfigMap"]["data"])  # raises ConfigError on a bad value


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
