"""The admin API the console adds: ``GET /admin/stats`` (the numbers of /metrics as JSON),
``GET /admin/config`` (secrets masked, audited), usage by hour; and every /admin route
refuses a key that is not an admin's."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from qwen_gateway.config import load_settings, redacted
from qwen_gateway.observability.metrics import Metrics
from qwen_gateway.routing.breaker import BreakerState
from qwen_gateway.routing.registry import ReplicaState
from qwen_gateway.safety.crypto import generate_key
from qwen_gateway.service.console import ConsoleService
from support.fixtures import InProcess
from tenancy.helpers import ASK, admin_key, client, new_key, secured

SAFETY = {"safety": {"review": {"encryption_key": generate_key()}}}


def metric_value(g: InProcess, name: str, **labels: str) -> float:
    """One sample of /metrics' text, for comparing with the JSON."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in g.container.services.metrics.render().decode().splitlines():
        if line.startswith(f"{name}{{") and all(p in line for p in want.split(",")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in /metrics")


async def test_stats_are_the_numbers_of_metrics(tmp_path: Path) -> None:
    async with secured(tmp_path) as g:
        admin = {"Authorization": f"Bearer {await admin_key(g)}"}
        sdk = client(g, await new_key(g))
        for _ in range(2):
            await sdk.chat.completions.create(model="scripted", messages=ASK)
        stream = await sdk.chat.completions.create(model="scripted", messages=ASK, stream=True)
        async for _ in stream:
            pass

        resp = await g.http.get("/admin/stats", headers=admin)
        assert resp.status_code == 200, resp.text
        stats = resp.json()
        assert stats["object"] == "stats" and stats["reviews"] is False
        assert stats["in_flight"] >= 1  # this request counts itself
        (row,) = [r for r in stats["models"] if r["model"] == "scripted"]
        assert row["deployment"] == "scripted"
        assert (row["requests"], row["errors"]) == (3, 0) and row["completion_tokens"] > 0
        assert row["completion_tokens"] == metric_value(
            g, "qwen_gateway_tokens_total", model="scripted", kind="completion"
        )
        assert row["requests"] == metric_value(
            g, "qwen_gateway_requests_total", model="scripted", status="200"
        )
        assert row["ttft_count"] == metric_value(
            g, "qwen_gateway_time_to_first_token_seconds_count", model="scripted"
        )
        assert row["ttft_count"] >= 1 and row["ttft_sum"] > 0
        assert row["latency_count"] == 3
        replicas = {(r["deployment"], r["replica"]): r for r in stats["replicas"]}
        assert replicas[("scripted", "0")] == {
            "deployment": "scripted",
            "replica": "0",
            "healthy": True,
            "breaker": "closed",
            "outstanding": 0,
        }
        assert ("other", "0") in replicas


def test_stats_name_breaker_states_and_read_engine_gauges() -> None:
    metrics = Metrics()
    engine = metrics.engine("tiny")
    engine.watch_load(lambda: (3, 5))
    engine.decode_step(4)
    engine.decode_step(2)
    states = [
        ReplicaState("a", "0", BreakerState.OPEN, False, 0),
        ReplicaState("a", "1", BreakerState.HALF_OPEN, True, 2),
    ]
    settings = load_settings({}, env={})
    console = ConsoleService(settings, metrics, lambda: states, lambda e: None, clock=lambda: 7.0)
    stats = console.stats()
    assert stats["time"] == 7.0 and stats["reviews"] is False
    assert [(r["breaker"], r["healthy"], r["outstanding"]) for r in stats["replicas"]] == [
        ("open", False, 0),
        ("half_open", True, 2),
    ]
    assert stats["engines"] == [
        {
            "engine": "tiny",
            "running": 3,
            "queue_depth": 5,
            "batch_size": 2,
            "max_batch_size": 4,
            "decode_steps": 2,
            "aborted": 0,
        }
    ]


async def test_config_is_shown_with_secrets_masked_and_audited(tmp_path: Path) -> None:
    server = {"metrics_auth": True, "metrics_token": "scrape-token-very-secret"}
    review_key = SAFETY["safety"]["review"]["encryption_key"]
    async with secured(tmp_path, server=server, **SAFETY) as g:
        admin = {"Authorization": f"Bearer {await admin_key(g)}"}
        resp = await g.http.get("/admin/config", headers=admin)
        assert resp.status_code == 200, resp.text
        assert "scrape-token-very-secret" not in resp.text and review_key not in resp.text
        shown = resp.json()
        assert shown["server"]["metrics_token"] == "**********"
        assert shown == redacted(g.container.settings)
        assert shown["data_dir"] == str(tmp_path)

        audit = await g.http.get("/admin/audit?action=config.show", headers=admin)
        (event,) = audit.json()["data"]
        assert event["actor"].startswith("key:") and event["action"] == "config.show"


def _hour(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:00")


async def test_usage_by_hour(tmp_path: Path, database_url: str) -> None:
    async with secured(tmp_path, database_url) as g:
        admin = {"Authorization": f"Bearer {await admin_key(g)}"}
        sdk = client(g, await new_key(g))
        before = datetime.now(UTC)
        for model in ("scripted", "scripted", "other"):
            await sdk.chat.completions.create(model=model, messages=ASK)
        after = datetime.now(UTC)
        resp = await g.http.get("/admin/usage?group_by=hour,model", headers=admin)
        assert resp.status_code == 200, resp.text
        rows = resp.json()["data"]
        assert {r["hour"] for r in rows} <= {_hour(before), _hour(after)}
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:00", r["hour"]) for r in rows)
        by_model: dict[str, int] = {}
        for r in rows:
            by_model[r["model"]] = by_model.get(r["model"], 0) + r["requests"]
        assert by_model == {"scripted": 2, "other": 1}

        csv = await g.http.get("/admin/usage?group_by=hour&format=csv", headers=admin)
        assert csv.text.splitlines()[0].startswith("hour,requests,")
        bad = await g.http.get("/admin/usage?group_by=minute", headers=admin)
        assert bad.status_code == 400 and "hour" in bad.json()["error"]["message"]


def _admin_calls(g: InProcess) -> list[tuple[str, str]]:
    """(method, path) of every route under /admin (as the app's OpenAPI document lists its
    routes), path parameters filled in."""
    calls = []
    for template, operations in g.app.openapi()["paths"].items():
        if template.startswith("/admin"):
            path = re.sub(r"\{key_id\}", "1", template)
            path = re.sub(r"\{[a-z_]+\}", "rev_0123456789abcdef", path)
            calls += [(method.upper(), path) for method in sorted(operations)]
    return calls


@pytest.mark.parametrize("safety", [False, True], ids=["plain", "safety"])
async def test_every_admin_route_refuses_a_non_admin_key(tmp_path: Path, safety: bool) -> None:
    async with secured(tmp_path, **(SAFETY if safety else {})) as g:
        user = {"Authorization": f"Bearer {await new_key(g)}"}
        admin = {"Authorization": f"Bearer {await admin_key(g)}"}
        calls = _admin_calls(g)
        paths = {p for _, p in calls}
        assert {"/admin/stats", "/admin/config", "/admin/keys", "/admin/usage"} <= paths
        assert ("/admin/reviews" in paths) is safety
        for method, path in calls:
            resp = await g.http.request(method, path, headers=user, json={})
            assert resp.status_code == 403, (method, path, resp.status_code, resp.text)
            assert resp.json()["error"]["code"] == "admin_required", resp.text
            anonymous = await g.http.request(method, path, json={})
            assert anonymous.status_code == 401, (method, path, anonymous.text)
        for path in ("/admin/stats", "/admin/config"):
            assert (await g.http.get(path, headers=admin)).status_code == 200
        stats = (await g.http.get("/admin/stats", headers=admin)).json()
        assert stats["reviews"] is safety
