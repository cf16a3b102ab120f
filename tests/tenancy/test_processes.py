"""Real gateway processes: two replicas sharing PostgreSQL and Redis (exact limits, revocation
everywhere), SIGTERM under load (no usage lost), and the canary (no prompt or completion text
in logs, database or metrics)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from support.faulty_upstream import FaultyUpstream
from support.server import Server, free_port, running_command

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyUpstream]:
    with FaultyUpstream().running() as upstream:
        yield upstream


def cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "qwen_gateway.cli.main", *args],
        env={**os.environ, **env}, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return out.stdout


@contextmanager
def replica(
    faulty: FaultyUpstream, env: dict[str, str], log: Path, model: str = "ok"
) -> Iterator[Server]:
    port = free_port()
    args = ["--engine", "openai", "--upstream-url", faulty.base_url, "--model", model,
            "--served-name", model, "--port", str(port)]  # fmt: skip
    with running_command(args, port, log, env=env, auth=True) as server:
        yield server


def test_two_replicas_share_limits_and_revocations(
    faulty: FaultyUpstream, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    env = {
        "QWEN_GATEWAY_DATABASE__URL": database_url,  # PostgreSQL, or one SQLite file for both
        "QWEN_GATEWAY_REDIS__URL": redis_url,
        "QWEN_GATEWAY_LIMITS__REDIS_PREFIX": f"t{secrets.token_hex(4)}",
        "QWEN_GATEWAY_DATA_DIR": str(tmp_path / "data"),
    }
    limited = json.loads(cli(env, "keys", "create", "--name", "exact", "--rpm", "50", "--json"))
    admin = json.loads(cli(env, "keys", "create", "--name", "ops", "--admin", "--json"))["key"]
    with ExitStack() as stack:
        a = stack.enter_context(replica(faulty, env, tmp_path / "a.log"))
        b = stack.enter_context(replica(faulty, env, tmp_path / "b.log"))

        async def burst() -> Counter[int]:
            headers = {"Authorization": f"Bearer {limited['key']}"}
            body = {"model": "ok", "messages": [{"role": "user", "content": "hi"}]}
            limits = httpx.Limits(max_connections=200)
            async with httpx.AsyncClient(timeout=60, limits=limits) as http:
                responses = await asyncio.gather(*(
                    http.post(f"{(a, b)[i % 2].base_url}/v1/chat/completions", json=body,
                              headers=headers)
                    for i in range(200)
                ))  # fmt: skip
            return Counter(r.status_code for r in responses)

        statuses = asyncio.run(burst())
        assert statuses == {200: 50, 429: 150}

        # a revocation on one replica reaches the other (pub/sub; cached at most 1 s anyway)
        user = json.loads(cli(env, "keys", "create", "--name", "user", "--json"))["key"]
        on_b = openai.OpenAI(base_url=b.base_url + "/v1", api_key=user, max_retries=0)
        assert on_b.models.list().data  # now cached on b
        key_id = json.loads(cli(env, "keys", "list", "--json"))[-1]["id"]
        revoked = httpx.post(f"{a.base_url}/admin/keys/{key_id}/revoke",
                             headers={"Authorization": f"Bearer {admin}"})  # fmt: skip
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
        deadline = time.monotonic() + 30  # a bound against hangs, not a timing assertion
        while True:
            try:
                on_b.models.list()
            except openai.AuthenticationError:
                break
            assert time.monotonic() < deadline, "the revocation never reached replica b"


def table_rows(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table of the gateway's database, SQLite or PostgreSQL."""
    from sqlalchemy import select

    from qwen_gateway.store.db import Database
    from qwen_gateway.store.tables import Base

    async def read() -> dict[str, list[dict[str, Any]]]:
        db = Database(url)
        try:
            async with db.sessions() as session:
                return {
                    name: [dict(r) for r in (await session.execute(select(table))).mappings()]
                    for name, table in Base.metadata.tables.items()
                }
        finally:
            await db.aclose()

    return asyncio.run(read())


def test_sigterm_under_load_loses_no_usage(
    faulty: FaultyUpstream, tmp_path: Path, database_url: str
) -> None:
    data = tmp_path / "data"
    env = {"QWEN_GATEWAY_DATA_DIR": str(data), "QWEN_GATEWAY_SERVER__SHUTDOWN_GRACE_SECONDS": "2",
           "QWEN_GATEWAY_DATABASE__URL": database_url}  # fmt: skip
    key = cli(env, "keys", "create", "--name", "load").strip()
    log = tmp_path / "serve.log"
    ids: list[str] = []
    tails: dict[str, str] = {}  # the last event each stream received
    with replica(faulty, env, log, model="stall") as server:

        async def load() -> None:
            headers = {"Authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
                started = [asyncio.Event() for _ in range(12)]

                async def one(i: int) -> None:
                    rid = f"req-drain-{i}"
                    ids.append(rid)
                    body = {"model": "stall", "messages": [{"role": "user", "content": "x"}],
                            "stream": True}  # fmt: skip
                    try:
                        async with http.stream(
                            "POST",
                            "/v1/chat/completions",
                            json=body,
                            headers={**headers, "x-request-id": rid},
                        ) as resp:
                            async for line in resp.aiter_lines():
                                started[i].set()  # the first chunk came: it is in flight
                                if line.startswith("data: "):
                                    tails[rid] = line.removeprefix("data: ")
                    except httpx.HTTPError:
                        pass
                    finally:
                        started[i].set()

                tasks = [asyncio.create_task(one(i)) for i in range(12)]
                await asyncio.gather(*(e.wait() for e in started))
                server.process.send_signal(signal.SIGTERM)  # every stream is mid-flight now
                await asyncio.gather(*tasks)

        asyncio.run(load())
        assert server.process.wait(timeout=60) == 0  # a graceful shutdown
        assert any("Application shutdown complete" in line for line in server.log_lines())
    # each stream cut off at the end of the grace period ended with an in-stream error event
    for rid in ids:
        error = json.loads(tails[rid])["error"]
        assert error["code"] == "server_shutting_down" and error["type"] == "server_error", rid
    rows = {r["request_id"]: r for r in table_rows(database_url)["usage_records"]}
    assert set(ids) <= set(rows), set(ids) - set(rows)
    assert all(rows[i]["prompt_tokens"] > 0 for i in ids)
    assert all(rows[i]["cancelled"] for i in ids)


def test_canary_appears_in_no_log_row_or_metric(
    faulty: FaultyUpstream, tmp_path: Path, database_url: str
) -> None:
    canary = f"CANARY{secrets.token_hex(8)}"
    data = tmp_path / "data"
    env = {"QWEN_GATEWAY_DATA_DIR": str(data), "QWEN_GATEWAY_SERVER__LOG_LEVEL": "debug",
           "QWEN_GATEWAY_DATABASE__URL": database_url}  # fmt: skip
    key = cli(env, "keys", "create", "--name", "canary-check").strip()
    log = tmp_path / "serve.log"
    with replica(faulty, env, log, model="echo") as server:
        sdk = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)
        ask = [{"role": "user", "content": f"please repeat {canary}"}]
        reply = sdk.chat.completions.create(model="echo", messages=ask)  # type: ignore[arg-type]
        assert canary in (reply.choices[0].message.content or "")  # it was in the completion
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in sdk.chat.completions.create(model="echo", messages=ask, stream=True)  # type: ignore[arg-type]
            if c.choices
        )
        assert canary in streamed
        bad = httpx.post(
            server.base_url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "echo", "messages": ask, "tool_choice": {"type": "function",
                  "function": {"name": canary}}},
        )  # fmt: skip
        assert bad.status_code == 400
        unauthorised = httpx.get(server.base_url + "/v1/models",
                                 headers={"Authorization": f"Bearer sk-qg-{canary}"})  # fmt: skip
        assert unauthorised.status_code == 401
        metrics = httpx.get(server.base_url + "/metrics").text
    assert canary not in metrics
    assert canary not in log.read_text(encoding="utf-8", errors="replace")
    assert "access" in log.read_text()  # the log was written
    rows = table_rows(database_url)
    dump = json.dumps(rows, default=str, ensure_ascii=False)
    assert rows["usage_records"] and any(
        r["action"] == "auth.failure" for r in rows["audit_events"]
    )
    assert canary not in dump
    for path in data.rglob("*"):  # the SQLite file and anything else the gateway wrote
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path
