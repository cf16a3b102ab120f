"""deploy/helm/qwen-gateway, rendered and checked offline (nothing is installed here).

Rendering: ``helm template`` when a helm binary is on PATH; otherwise (no package registry
here ships one) tests/support/helm.py, which reads exactly the template subset the chart uses
and fails on anything else. The rendered objects are validated against the Kubernetes v1.35
JSON schemas (strict: unknown fields are errors) vendored in tests/data/kubernetes, and also
with ``kubernetes-validate`` when that package is installed. The ServiceMonitor (a CRD) is
checked structurally only. Beyond the schemas: selectors match, probes reach /health and
/ready on a declared port, the security context is non-root, read-only and unprivileged,
the HPA's custom metric is a gateway metric, and the gateway's environment plus its
ConfigMap load as Settings.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from qwen_gateway.config import ConfigError, load_settings
from support.containerfile import final_env
from support.gateway_series import gateway_series
from support.helm import Renderer, TemplateError, parse, render_chart

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "qwen-gateway"
SCHEMAS = ROOT / "tests" / "data" / "kubernetes" / "schemas.json"
EVERYTHING: dict[str, Any] = {
    "vllm": {"enabled": True},
    "ingress": {"enabled": True, "tlsSecretName": "qwen-gateway-tls"},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "secret": {
        "env": {
            "QWEN_GATEWAY_DATABASE__URL": "postgresql://gateway:pw@postgres:5432/gateway",
            "QWEN_GATEWAY_REDIS__URL": "redis://:pw@redis:6379/0",
        }
    },
}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    helm = shutil.which("helm")
    if helm is None:
        return render_chart(CHART, values, release="qg")
    out = subprocess.run(
        [helm, "template", "qg", str(CHART), "--values", "-"],
        input=yaml.safe_dump(values or {}),
        capture_output=True,
        text=True,
        check=True,
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def by_kind(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


@cache
def _bundle() -> dict[str, Any]:
    bundle: dict[str, Any] = json.loads(SCHEMAS.read_text())
    return bundle


def schema_errors(obj: dict[str, Any]) -> list[str]:
    bundle = _bundle()
    key = f"{obj['apiVersion']}/{obj['kind']}"
    if key not in bundle["kinds"]:
        return [f"{key}: no vendored schema"]
    schema = {**bundle["kinds"][key], "$defs": bundle["$defs"]}
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{key} {'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


@pytest.mark.parametrize("values", [{}, EVERYTHING], ids=["defaults", "everything"])
def test_every_rendered_object_validates_against_the_kubernetes_schemas(
    values: dict[str, Any],
) -> None:
    objects = render(values)
    assert objects
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            continue  # a CRD: see test_the_service_monitor_scrapes_the_gateway_service
        assert schema_errors(obj) == [], obj["kind"]
    try:
        import kubernetes_validate  # type: ignore[import-not-found]
    except ImportError:
        return  # the vendored schemas above are the same generator's output
    for obj in objects:
        if obj["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(obj, "1.35.0", strict=True)


def test_the_schema_check_can_fail() -> None:
    deployment = by_kind(render())[("Deployment", "qg")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["paht"] = "/ready"
    container["securityContext"]["runAsNonRoot"] = "yes"
    del deployment["spec"]["selector"]
    errors = "\n".join(schema_errors(deployment))
    assert "'paht' was unexpected" in errors
    assert "'yes' is not of type 'boolean'" in errors
    assert "'selector' is a required property" in errors


def test_the_defaults_render_the_gateway_with_autoscaling_and_a_disruption_budget() -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in render())
    assert kinds == [
        ("ConfigMap", "qg"),
        ("Deployment", "qg"),
        ("HorizontalPodAutoscaler", "qg"),
        ("PodDisruptionBudget", "qg"),
        ("Service", "qg"),
    ]
    everything = sorted((o["kind"], o["metadata"]["name"]) for o in render(EVERYTHING))
    assert everything == sorted(
        [*kinds, ("Ingress", "qg"), ("Secret", "qg"), ("ServiceMonitor", "qg"),
         ("Deployment", "qg-vllm"), ("Service", "qg-vllm")]
    )  # fmt: skip


def _gateway(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = by_kind(objects)[("Deployment", "qg")]
    return deployment, deployment["spec"]["template"]["spec"]["containers"][0]


def test_selectors_probes_and_security_context() -> None:
    objects = by_kind(render(EVERYTHING))
    deployment, container = _gateway(list(objects.values()))
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == pod_labels
    assert objects[("Service", "qg")]["spec"]["selector"] == pod_labels
    assert objects[("PodDisruptionBudget", "qg")]["spec"]["selector"]["matchLabels"] == pod_labels
    vllm_labels = objects[("Deployment", "qg-vllm")]["spec"]["template"]["metadata"]["labels"]
    assert objects[("Service", "qg-vllm")]["spec"]["selector"] == vllm_labels
    assert not set(vllm_labels.items()) >= set(pod_labels.items())  # never selects the other
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    image_env = final_env((ROOT / "deploy" / "Containerfile").read_text())
    assert ports["http"] == int(image_env["QWEN_GATEWAY_SERVER__PORT"])
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # a read-only root: the data directory and /tmp are writable volumes
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert image_env["QWEN_GATEWAY_DATA_DIR"] in mounts and "/tmp" in mounts
    assert not mounts["/tmp"].get("readOnly")
    service = objects[("Service", "qg")]["spec"]["ports"][0]
    assert service["targetPort"] == "http"
    ingress = objects[("Ingress", "qg")]["spec"]
    backend = ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "qg", "port": {"name": "http"}}
    assert ingress["tls"][0]["hosts"] == [ingress["rules"][0]["host"]]


def test_the_autoscaler_scales_the_gateway_on_cpu_and_a_gateway_metric() -> None:
    objects = by_kind(render())
    hpa = objects[("HorizontalPodAutoscaler", "qg")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "qg"}
    [cpu, custom] = hpa["metrics"]
    assert cpu["resource"]["name"] == "cpu"
    assert custom["pods"]["metric"]["name"] in gateway_series()
    assert "replicas" not in objects[("Deployment", "qg")]["spec"]  # the HPA owns it
    assert hpa["minReplicas"] > objects[("PodDisruptionBudget", "qg")]["spec"]["minAvailable"]
    fixed = by_kind(render({"autoscaling": {"enabled": False}, "replicaCount": 3}))
    assert fixed[("Deployment", "qg")]["spec"]["replicas"] == 3
    assert ("HorizontalPodAutoscaler", "qg") not in fixed


def test_the_service_monitor_scrapes_the_gateway_service() -> None:
    objects = by_kind(render(EVERYTHING))
    monitor = objects[("ServiceMonitor", "qg")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = objects[("Service", "qg")]
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def _settings(objects: list[dict[str, Any]], tmp_path: Path) -> Any:
    """The Settings the gateway container starts with: the image's ENV, the Deployment's
    env, the Secret's values, and the ConfigMap's file where QWEN_GATEWAY_CONFIG says."""
    index = by_kind(objects)
    _, container = _gateway(objects)
    env = final_env((ROOT / "deploy" / "Containerfile").read_text())
    env.pop("PATH")
    env.update({e["name"]: e["value"] for e in container["env"]})
    secret = index.get(("Secret", "qg"))
    if secret is not None:
        env.update(secret["stringData"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    config = Path(env.pop("QWEN_GATEWAY_CONFIG"))
    assert config.parent == Path(mount["mountPath"])
    local = tmp_path / config.name
    local.write_text(index[("ConfigMap", "qg")]["data"][config.name])
    return load_settings(config_file=local, env=env)


def test_the_gateway_settings_load_with_vllm_in_the_chart(tmp_path: Path) -> None:
    objects = render(EVERYTHING)
    settings = _settings(objects, tmp_path)
    assert settings.model.engine == "vllm"
    assert settings.model.vllm.remote_url == "http://qg-vllm:8000/v1"
    assert settings.served_model_name == "Qwen/Qwen2.5-7B-Instruct"
    assert settings.model.context_window == 32768
    assert settings.limits.backend == "redis"
    index = by_kind(objects)
    port = index[("Service", "qg-vllm")]["spec"]["ports"][0]["port"]
    assert settings.model.vllm.remote_url.endswith(f":{port}/v1")
    vllm = index[("Deployment", "qg-vllm")]["spec"]["template"]["spec"]["containers"][0]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    args = vllm["args"]
    assert args[args.index("--served-model-name") + 1] == settings.served_model_name
    assert args[-1] == "--enable-prefix-caching"
    grace = index[("Deployment", "qg")]["spec"]["template"]["spec"]
    server = settings.server
    # /ready answers 503 for longer than the readiness probe takes to see it
    (gateway,) = grace["containers"]
    ready = gateway["readinessProbe"]
    assert server.drain_seconds > ready["periodSeconds"] * ready["failureThreshold"]
    stop = server.drain_seconds + server.shutdown_grace_seconds + 10  # + the usage flush
    assert stop < grace["terminationGracePeriodSeconds"]


def test_without_vllm_the_gateway_relays_to_the_upstream(tmp_path: Path) -> None:
    values = {"upstream": {"baseURL": "http://llm.example:8000/v1"}, "config": {"limits": None}}
    settings = _settings(render(values), tmp_path)  # a null drops the key, as in helm
    assert settings.limits.backend == "auto"
    assert settings.model.engine == "openai"
    assert settings.model.upstream.base_url == "http://llm.example:8000/v1"


def test_the_defaults_need_redis_for_exact_limits_across_replicas(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"redis\.url is not set"):
        _settings(render(), tmp_path)


def test_a_misspelt_setting_in_the_values_would_be_caught(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shutdown_grace"):
        _settings(render({"config": {"server": {"shutdown_grace": 5}}}), tmp_path)


def _render_text(template: str, values: dict[str, Any]) -> str:
    defines: dict[str, list[Any]] = {}
    nodes = parse(template, defines)
    return Renderer(defines).render(nodes, {"Values": values})


def test_the_renderer_follows_go_template_whitespace_and_pipelines() -> None:
    template = (
        '{{- define "n" -}}\n{{ .Values.name | trunc 3 }}\n{{- end -}}\n'
        'a:\n  {{- if .Values.on }}\n  b: {{ include "n" . | quote }}\n  {{- else }}\n'
        "  b: off\n  {{- end }}\n  c:\n    {{- toYaml .Values.list | nindent 4 }}\n"
        '  d: {{ default "x" .Values.empty }}\n'
    )
    values = {"name": "qwen", "on": True, "list": [1, {"k": "v"}], "empty": ""}
    assert _render_text(template, values) == ('a:\n  b: "qwe"\n  c:\n    - 1\n    - k: v\n  d: x\n')
    assert "b: off" in _render_text(template, {**values, "on": False})


def test_the_renderer_refuses_what_it_does_not_read() -> None:
    with pytest.raises(TemplateError, match="unsupported"):
        _render_text("{{ range .Values.list }}x{{ end }}", {"list": [1]})
    with pytest.raises(TemplateError, match="no value"):
        _render_text("{{ .Values.nmae }}", {"name": "qwen"})
    with pytest.raises(TemplateError, match="unclosed"):
        _render_text("{{ if .Values.name }}x", {"name": "qwen"})


def test_a_changed_configuration_rolls_the_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment, _ = _gateway(render(values))
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    same = checksum({})
    assert len(same) == 64 and same == checksum({})
    assert checksum({"config": {"server": {"drain_seconds": 15}}}) != same
    with_extra = render({"podAnnotations": {"team": "ml"}})
    assert _gateway(with_extra)[0]["spec"]["template"]["metadata"]["annotations"]["team"] == "ml"
