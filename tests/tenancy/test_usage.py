"""Usage records and reports: one record per request, grouped by key, model and day, as JSON,
CSV and through the CLI; on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

from store.helpers import eventually, proxied, stored
from support.metrics import sample
from tenancy.helpers import ASK, admin_key, new_key, secured


async def test_usage_is_recorded_and_reported(tmp_path: Path, database_url: str) -> None:
    async with secured(tmp_path, database_url) as g:
        admin = {"Authorization": f"Bearer {await admin_key(g)}"}
        a, b = await new_key(g), await new_key(g)
        ids = {}
        for key, model, stream in ((a, "scripted", False), (a, "scripted", True),
                                   (a, "other", False), (b, "scripted", False)):  # fmt: skip
            resp = await g.http.post(
                "/v1/chat/completions",
                json={"model": model, "messages": ASK, "stream": stream},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert resp.status_code == 200
            ids[resp.headers["x-request-id"]] = (key, model)
        bad = await g.http.post("/v1/chat/completions", json={"model": "scripted"},
                                headers={"Authorization": f"Bearer {b}"})  # fmt: skip
        assert bad.status_code == 400
        await g.container.store.writer.flush()
        assert (
            set(ids) | {bad.headers["x-request-id"]} <= await g.container.store.usage.request_ids()
        )

        keys = {k["id"]: k for k in (await g.http.get("/admin/keys", headers=admin)).json()["data"]}
        key_a = next(f"key:{i}" for i, k in keys.items() if k["prefix"] == a[:12] + "…")
        report = await g.http.get("/admin/usage?group_by=key,model", headers=admin)
        rows = {(r["key"], r["model"]): r for r in report.json()["data"]}
        assert rows[(key_a, "scripted")]["requests"] == 2
        assert rows[(key_a, "other")]["requests"] == 1
        assert rows[(key_a, "scripted")]["completion_tokens"] > 0
        assert rows[(key_a, "scripted")]["prompt_tokens"] > 0
        by_day = (await g.http.get("/admin/usage?group_by=day", headers=admin)).json()["data"]
        today = datetime.now(UTC).date().isoformat()
        assert [r["day"] for r in by_day] == [today]
        assert by_day[0]["requests"] >= 5 and by_day[0]["errors"] >= 1
        as_csv = await g.http.get("/admin/usage?group_by=key,model&format=csv", headers=admin)
        assert as_csv.headers["content-type"].startswith("text/csv")
        parsed = list(csv.DictReader(io.StringIO(as_csv.text)))
        assert {(r["key"], r["model"] or None) for r in parsed} == set(rows)
        assert (await g.http.get("/admin/usage?group_by=prompt", headers=admin)).status_code == 400
        actions = [
            e["action"] for e in (await g.http.get("/admin/audit", headers=admin)).json()["data"]
        ]
        assert "usage.export" in actions


def run_cli(data: Path, *args: str) -> str:
    env = {**os.environ, "QWEN_GATEWAY_DATA_DIR": str(data)}
    out = subprocess.run(
        [sys.executable, "-m", "qwen_gateway.cli.main", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_keys_and_usage_cli(tmp_path: Path) -> None:
    import json

    data = tmp_path / "data"
    created = json.loads(run_cli(
        data, "keys", "create", "--name", "svc ünïcode", "--models", "a,b", "--rpm", "5",
        "--tpm", "100", "--max-concurrency", "2", "--daily-tokens", "1000",
        "--monthly-tokens", "9000", "--default-max-tokens", "64", "--expires", "30d", "--json",
    ))  # fmt: skip
    assert created["key"].startswith("sk-qg-")
    assert (created["models"], created["rpm"], created["max_concurrency"]) == (["a", "b"], 5, 2)
    assert created["default_max_tokens"] == 64
    listed = json.loads(run_cli(data, "keys", "list", "--json"))
    assert [k["name"] for k in listed] == ["svc ünïcode"]
    assert created["key"] not in json.dumps(listed)
    table = run_cli(data, "keys", "list")
    assert "svc ünïcode" in table and created["key"] not in table
    assert "default_max_tokens=64" in table
    shown = json.loads(run_cli(data, "keys", "show", str(created["id"]), "--json"))
    assert shown[0]["status"] == "active"
    updated = json.loads(run_cli(
        data, "keys", "update", str(created["id"]), "--rpm", "7", "--clear", "tpm,daily_tokens",
        "--json",
    ))  # fmt: skip
    assert (updated[0]["rpm"], updated[0]["tpm"], updated[0]["daily_tokens"]) == (7, None, None)
    assert updated[0]["monthly_tokens"] == 9000
    rotated = run_cli(data, "keys", "rotate", str(created["id"])).strip()
    assert rotated.startswith("sk-qg-") and rotated != created["key"]
    run_cli(data, "keys", "revoke", str(created["id"]))
    assert (
        json.loads(run_cli(data, "keys", "show", str(created["id"]), "--json"))[0]["status"]
        == "revoked"
    )
    header = run_cli(data, "usage", "--group-by", "key,model", "--csv").splitlines()[0]
    assert header == "key,model,requests,prompt_tokens,completion_tokens,cancelled,errors"
    missing = subprocess.run(
        [sys.executable, "-m", "qwen_gateway.cli.main", "keys", "show", "999"],
        env={**os.environ, "QWEN_GATEWAY_DATA_DIR": str(data)}, capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode == 1 and "No key with id 999" in missing.stderr


async def test_a_request_to_no_route_records_nothing_and_spoils_no_batch(
    tmp_path: Path, database_url: str
) -> None:
    """A legitimate request and an unauthenticated POST with a NUL in its path, in one flush
    window: the legitimate record is stored, the 404 records nothing."""
    async with secured(tmp_path, database_url, usage={"flush_seconds": 1}) as g:
        key = await new_key(g)
        started = datetime.now(UTC)  # PostgreSQL's database is shared with earlier tests
        rid = f"legit-{uuid.uuid4().hex[:8]}"
        legit, nul = await asyncio.gather(
            g.http.post(
                "/v1/chat/completions",
                json={"model": "scripted", "messages": ASK, "max_tokens": 1},
                headers={"Authorization": f"Bearer {key}", "X-Request-ID": rid},
            ),
            g.http.post("/v1/x%00y"),
        )
        assert (legit.status_code, nul.status_code) == (200, 404)
        await g.container.store.writer.flush()
        assert rid in await g.container.store.usage.request_ids()
        assert nul.headers["x-request-id"] not in await g.container.store.usage.request_ids()
        assert g.container.store.writer.stats.dropped == 0
        rows = await g.container.store.usage.report(["key"], since=started)
        assert [r["requests"] for r in rows] == [1]  # the legitimate request only
        assert all(r["key"] != "anonymous" for r in rows)


async def test_usage_of_requests_during_a_database_outage_is_stored_once_it_is_back(
    tmp_path: Path, postgres_url: str
) -> None:
    with proxied(postgres_url) as (proxy, url):
        async with secured(
            tmp_path, url, auth={"enabled": False}, usage={"queue_size": 10, "batch_size": 5}
        ) as g:
            g.container.store.db.ping_ttl = 0
            headers: dict[str, str] = {}  # authentication needs the database: none here
            body = {"model": "scripted", "messages": ASK}
            assert (
                await g.http.post("/v1/chat/completions", json=body, headers=headers)
            ).status_code == 200
            proxy.down()
            ids = []
            for _ in range(25):  # more than the queue holds: the rest spill
                resp = await g.http.post("/v1/chat/completions", json=body, headers=headers)
                assert resp.status_code == 200
                ids.append(resp.headers["x-request-id"])
            ready = await g.http.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["error"]["code"] == "database_unavailable"
            proxy.up()

            async def is_ready() -> bool:
                return (await g.http.get("/ready")).status_code == 200

            await eventually(is_ready)

            async def all_stored() -> bool:
                return set(ids) <= await g.container.store.usage.request_ids()

            await eventually(all_stored)
            metrics = (await g.http.get("/metrics")).text
            assert sample(metrics, "qwen_gateway_store_entries_total", outcome="spilled") > 0
            assert sample(metrics, "qwen_gateway_store_entries_total", outcome="dropped") == 0
            assert sample(metrics, "qwen_gateway_store_failed_batches_total") > 0
    counts = await stored(postgres_url, "req_")
    assert all(counts[i] == 1 for i in ids)  # nothing lost, nothing stored twice
