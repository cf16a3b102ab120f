"""deploy/compose.yaml and the files beside it, checked offline (nothing is started here).

The compose file, after Compose's own variable interpolation with the defaults it names, is
validated against the Compose Specification's JSON schema (vendored, see
tests/data/compose-spec/README.md). Beyond the schema: every reference resolves (services,
secrets, volumes, bind-mounted files), every service has a healthcheck and every dependency a
condition, no password is written into the file, the gateways' environment plus the image's
ENV plus the example secret config load as Settings (unknown keys are errors there), nginx and
Prometheus point at exactly the gateway replicas, and every query of the Grafana dashboard
names metrics (and labels) the gateway defines.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from qwen_gateway.config import ConfigError, load_settings
from support.containerfile import final_env
from support.gateway_series import gateway_series

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMA = ROOT / "tests" / "data" / "compose-spec" / "compose-spec.json"
GATEWAYS = ("gateway-1", "gateway-2")
SERVICES = {"proxy", *GATEWAYS, "vllm", "postgres", "redis", "prometheus", "grafana"}
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_]\w*)")


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$VAR``;
    ``$$`` is a literal ``$``. A variable with neither a value nor a default is an error."""
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if not isinstance(node, str):
        return node

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(3)
        if env.get(name):
            return env[name]
        if match.group(2) is None:
            raise AssertionError(f"${{{name}}} has no value and no default")
        return match.group(2)

    return _VARIABLE.sub(one, node)


def load(path: Path = DEPLOY / "compose.yaml") -> dict[str, Any]:
    raw = yaml.safe_load(path.read_text())
    document: dict[str, Any] = interpolate(raw, {})
    return document


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_the_compose_file_validates_against_the_compose_specification() -> None:
    document = load()
    assert schema_errors(document) == []
    assert set(document["services"]) == SERVICES


def test_the_schema_check_can_fail() -> None:
    document = load()
    document["services"]["gateway-1"]["depends_on"]["postgres"]["condition"] = "when_ready"
    document["services"]["proxy"]["ports"] = {"published": 8080}
    document["services"]["redis"]["restrat"] = "always"
    errors = "\n".join(schema_errors(document))
    for expected in (
        "gateway-1/depends_on",
        "when_ready",
        "proxy/ports",
        "'restrat' was unexpected",
    ):
        assert expected in errors


def _names(entries: Any) -> list[str]:
    if isinstance(entries, dict):
        return list(entries)
    return [e if isinstance(e, str) else e["source"] for e in entries or []]


def test_references_resolve_and_every_service_is_checked() -> None:
    document = load()
    services = document["services"]
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert service.get("restart") == "unless-stopped", name
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert rule["condition"] in ("service_healthy", "service_started"), name
        for secret in _names(service.get("secrets")):
            assert secret in document["secrets"], f"{name}: unknown secret {secret}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} is not shipped"
            else:
                assert source in document["volumes"], f"{name}: unknown volume {source}"
        image = service["image"]
        assert re.search(r":[\w][\w.-]*$", image) and not image.endswith(":latest"), image
    for secret in document["secrets"].values():
        path = DEPLOY / secret["file"]
        shipped = path.with_name(path.stem + ".example" + path.suffix)
        assert path.parent.is_dir() and (path.suffix != ".yaml" or shipped.is_file())
    # the stack's start order: data stores healthy before the gateways, the first gateway
    # (migrations, first admin key) before the second, both before the proxy
    assert services["gateway-2"]["depends_on"]["gateway-1"]["condition"] == "service_healthy"
    for gateway in GATEWAYS:
        for store in ("postgres", "redis"):
            assert services[gateway]["depends_on"][store]["condition"] == "service_healthy"
        assert services["proxy"]["depends_on"][gateway]["condition"] == "service_healthy"


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_no_secret_is_written_into_the_compose_file() -> None:
    document = load()
    text = (DEPLOY / "compose.yaml").read_text()
    assert not re.search(r"://[^/\s:@]*:[^@\s]+@", text), "a URL with a password"
    for name, service in document["services"].items():
        for key in _environment(service):
            if re.search(r"PASSWORD|SECRET|TOKEN|API_KEY", key):
                assert key.endswith("_FILE"), f"{name}: {key} holds a secret in the file"
        assert "--requirepass" not in " ".join(map(str, service.get("command") or []))


def _gateway_settings(service: dict[str, Any]) -> Any:
    """The Settings a gateway container starts with: the image's ENV, the service's
    environment on top, and the example secret config in place of /run/secrets/."""
    env = {k: v for k, v in final_env((DEPLOY / "Containerfile").read_text()).items()}
    env.update(_environment(service))
    assert env.pop("QWEN_GATEWAY_CONFIG") == "/run/secrets/gateway_config"
    env = {k: v for k, v in env.items() if k.startswith("QWEN_GATEWAY_") or k.isupper()}
    config = DEPLOY / "secrets" / "gateway.example.yaml"
    return load_settings(config_file=config, env=env)


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_every_setting_the_gateways_get_exists_and_fits_the_stack(gateway: str) -> None:
    document = load()
    service = document["services"][gateway]
    settings = _gateway_settings(service)  # ConfigError on any unknown key or bad value
    assert settings.model.engine == "vllm"
    assert settings.model.vllm.remote_url == "http://vllm:8000/v1"
    assert settings.served_model_name == "Qwen/Qwen2.5-7B-Instruct"
    assert settings.model.context_window == 32768
    assert settings.database_url.startswith("postgresql+asyncpg://gateway:")
    assert settings.database_url.endswith("@postgres:5432/gateway")
    assert settings.redis.url is not None
    assert settings.redis.url.get_secret_value().endswith("@redis:6379/0")
    assert settings.limits.backend == "redis"
    assert settings.cache is not None and settings.cache.backend == "redis"
    # X-Forwarded-For believed from nginx's fixed address only, not from any container
    proxy = document["services"]["proxy"]["networks"]["backend"]["ipv4_address"]
    assert settings.server.trusted_proxies == [f"{proxy}/32"]
    subnet = document["networks"]["backend"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(proxy) in ipaddress.ip_network(subnet)
    assert settings.server.host == "0.0.0.0"
    # vLLM serves the name the gateway asks it for, with the same window
    vllm = document["services"]["vllm"]["command"]
    assert vllm[vllm.index("--served-model-name") + 1] == settings.served_model_name
    assert int(vllm[vllm.index("--max-model-len") + 1]) == settings.model.context_window
    assert service["stop_grace_period"] == "45s"
    assert settings.server.drain_seconds > 0  # /ready flips before the proxy stops routing
    # drain, grace and the usage flush (10 s) end before the runtime kills it
    assert settings.server.drain_seconds + settings.server.shutdown_grace_seconds + 10 < 45


def test_a_misspelt_setting_in_the_compose_file_would_be_caught() -> None:
    service = load()["services"]["gateway-1"]
    service["environment"]["QWEN_GATEWAY_SERVER__TRUSTED_PROXY"] = "10.0.0.0/8"
    with pytest.raises(ConfigError, match="trusted_proxy"):
        _gateway_settings(service)


def test_nginx_and_prometheus_point_at_exactly_the_gateway_replicas() -> None:
    document = load()
    port = _gateway_settings(document["services"]["gateway-1"]).server.port
    expected = {f"{g}:{port}" for g in GATEWAYS}
    nginx = (DEPLOY / "nginx.conf").read_text()
    upstream = re.search(r"upstream gateway \{(.*?)\}", nginx, re.S)
    assert upstream is not None
    assert set(re.findall(r"^\s*server\s+(\S+)", upstream.group(1), re.M)) == expected
    assert "proxy_buffering off" in nginx  # server-sent events pass through as they come
    # a POST that may have reached a replica (503 overloaded, a timeout) is never sent twice
    (retry,) = re.findall(r"proxy_next_upstream\s+([^;]*);", nginx)
    assert "non_idempotent" not in retry and "timeout" not in retry
    assert re.search(r"location = /metrics \{\s*return 404;", nginx)
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    targets = {t for c in jobs["qwen-gateway"]["static_configs"] for t in c["targets"]}
    assert targets == expected
    proxy_port = document["services"]["proxy"]["ports"][0].rsplit(":", 1)[1]
    assert re.search(rf"listen {proxy_port};", nginx)


_FUNCTIONS = {
    "sum", "min", "max", "avg", "count", "rate", "irate", "increase", "histogram_quantile",
    "clamp_min", "clamp_max", "by", "without", "on", "ignoring", "and", "or", "unless",
}  # fmt: skip


def query_references(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(series name, label names used with it) for each series a PromQL expression reads;
    labels of ``by (...)`` clauses count for every series of the expression."""
    grouped = {
        label.strip()
        for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
        for label in clause.split(",")
        if label.strip()
    }
    bare = re.sub(r"\b(?:by|without)\s*\([^)]*\)", " ", expr)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)  # range selectors
    bare = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", " ", bare)  # numbers
    for name, matchers in re.findall(
        r"([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?", re.sub(r'"[^"]*"', '""', bare)
    ):
        if name in _FUNCTIONS:
            continue
        if re.search(rf"\b{re.escape(name)}\s*\(", bare):
            continue  # a function call
        labels = set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers or ""))
        yield name, labels | grouped


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "qwen-gateway.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def unknown_references(exprs: list[str]) -> list[str]:
    known = gateway_series()
    problems = []
    for expr in exprs:
        for name, labels in query_references(expr):
            if name not in known:
                problems.append(f"{name}: no such series")
            elif labels - known[name]:
                problems.append(f"{name}: no label {sorted(labels - known[name])}")
    return problems


def test_every_dashboard_query_reads_series_the_gateway_defines() -> None:
    exprs = dashboard_queries()
    assert unknown_references(exprs) == []
    read = {name for e in exprs for name, _ in query_references(e)}
    # the panels: TTFT, tokens/s, queue depth, errors by code, limit refusals,
    # cache hit rate, replica health
    for series in (
        "qwen_gateway_time_to_first_token_seconds_bucket",
        "qwen_gateway_tokens_total",
        "qwen_gateway_engine_queue_depth",
        "qwen_gateway_requests_total",
        "qwen_gateway_cache_requests_total",
        "qwen_gateway_replica_healthy",
        "up",
    ):
        assert series in read
    assert any('status="429"' in e for e in exprs)


def test_the_dashboard_check_can_fail() -> None:
    problems = unknown_references(
        [
            "sum(rate(qwen_gateway_request_total[5m]))",
            'sum by (tenant) (rate(qwen_gateway_requests_total{code="500"}[5m]))',
            "histogram_quantile(0.9, sum by (le) (rate(qwen_gateway_ttft_seconds_bucket[1m])))",
        ]
    )
    assert problems == [
        "qwen_gateway_request_total: no such series",
        "qwen_gateway_requests_total: no label ['code', 'tenant']",
        "qwen_gateway_ttft_seconds_bucket: no such series",
    ]


def test_grafana_is_provisioned_with_the_dashboard_and_prometheus() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    [datasource] = source["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "qwen-gateway.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {datasource["uid"]}
    provider = yaml.safe_load((provisioning / "dashboards" / "qwen-gateway.yaml").read_text())
    mounts = load()["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts
    assert os.path.basename(str(SCHEMA)) == "compose-spec.json"


def test_nginx_accepts_its_config(tmp_path: Path) -> None:
    """``nginx -t`` where nginx is installed (the service names pointed at loopback, the pid
    file moved to a temporary folder); otherwise its block and statement structure."""
    text = (DEPLOY / "nginx.conf").read_text()
    nginx = shutil.which("nginx")
    if nginx is None:
        body = [re.sub(r"#.*", "", line).strip() for line in text.splitlines()]
        statements = [line for line in body if line]
        assert all(s.endswith((";", "{", "}")) for s in statements), statements
        depth = 0
        for s in statements:
            depth += s.count("{") - s.count("}")
            assert depth >= 0
        assert depth == 0
        return
    local = re.sub(r"gateway-(\d):8000", r"127.0.0.1:1800\1", text)
    local = local.replace("pid /var/run/nginx.pid;", f"pid {tmp_path / 'nginx.pid'};")
    (tmp_path / "nginx.conf").write_text(local)
    out = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
