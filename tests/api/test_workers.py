"""``serve --workers N``: several processes on one port, limits exact across them (Redis),
one SQLite database and one log file shared safely; refused without Redis."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from support.faulty_upstream import FaultyUpstream
from support.server import free_port, running_command

pytestmark = pytest.mark.e2e


@pytest.fixture
def upstream() -> Iterator[FaultyUpstream]:
    with FaultyUpstream().running() as faulty:
        yield faulty


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "qwen_gateway.cli.main", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return done.stdout


def _log_entries(path: Path) -> list[dict[str, Any]]:
    entries = []
    for f in sorted(path.parent.glob(path.name + "*")):
        if not f.name.endswith(".lock"):
            entries += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return entries


def _answered(tmp_path: Path, log_file: Path) -> tuple[int, int]:
    """Answered requests (200) in the usage records, and in the access log lines."""
    with sqlite3.connect(tmp_path / "data" / "gateway.db") as db:
        (rows,) = db.execute("SELECT count(*) FROM usage_records WHERE status = 200").fetchone()
    lines = [e for e in _log_entries(log_file) if e.get("event") == "access"]
    return rows, sum(e["status"] == 200 for e in lines)


def test_workers_without_redis_are_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qwen_gateway.cli.main", "serve", "--workers", "2",
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("QWEN_GATEWAY_")},
    )  # fmt: skip
    assert done.returncode == 2
    assert "Refusing --workers 2 without Redis" in " ".join(done.stderr.split())


def test_two_workers_share_the_port_the_limits_and_the_database(
    upstream: FaultyUpstream, redis_url: str, tmp_path: Path
) -> None:
    log_file = tmp_path / "logs" / "gateway.log"
    env = {
        "QWEN_GATEWAY_DATA_DIR": str(tmp_path / "data"),  # one SQLite file for both workers
        "QWEN_GATEWAY_REDIS__URL": redis_url,
        "QWEN_GATEWAY_LIMITS__REDIS_PREFIX": f"w{secrets.token_hex(4)}",
    }
    limited = json.loads(_cli(env, "keys", "create", "--name", "exact", "--rpm", "20", "--json"))
    other = json.loads(_cli(env, "keys", "create", "--name", "spread", "--json"))
    port = free_port()
    args = ["--engine", "openai", "--upstream-url", upstream.base_url, "--model", "ok",
            "--served-name", "ok", "--port", str(port), "--workers", "2",
            "--log-file", str(log_file)]  # fmt: skip
    with running_command(args, port, tmp_path / "serve.log", env=env, auth=True) as server:
        deadline = time.monotonic() + 120  # a bound against hangs, not a timing assertion
        while sum(e.get("message") == f"worker {i} ready"
                  for e in _log_entries(log_file) for i in (0, 1)) < 2:  # fmt: skip
            assert server.process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)  # polling the log for both workers' readiness

        async def burst(key: str, n: int) -> Counter[int]:
            body = {"model": "ok", "messages": [{"role": "user", "content": "hi"}]}
            headers = {"Authorization": f"Bearer {key}"}
            limits = httpx.Limits(max_connections=n)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60,
                                         limits=limits) as http:  # fmt: skip
                replies = await asyncio.gather(*(
                    http.post("/v1/chat/completions", json=body, headers=headers)
                    for _ in range(n)
                ))  # fmt: skip
            return Counter(r.status_code for r in replies)

        assert asyncio.run(burst(limited["key"], 30)) == {200: 20, 429: 10}  # exact
        # both workers answered (each access line names its worker): bursts until both did
        served = 30
        for _ in range(20):
            workers = {e["pid"] for e in _log_entries(log_file) if e.get("event") == "access"}
            if len(workers) == 2:
                break
            assert asyncio.run(burst(other["key"], 20)) == {200: 20}
            served += 20
        assert len(workers) == 2

        # a worker that dies is replaced, and the port keeps answering; first, what has been
        # answered so far is written (a SIGKILLed process loses what it still holds)
        while _answered(tmp_path, log_file) != (served - 10, served - 10):
            assert time.monotonic() < deadline + 60
            time.sleep(0.2)  # polling the database and the log for the writes
        victim = next(
            e["pid"] for e in _log_entries(log_file) if e.get("message") == "worker 1 ready"
        )
        os.kill(victim, signal.SIGKILL)
        while not [e for e in _log_entries(log_file)
                   if e.get("message") == "worker 1 ready" and e["pid"] != victim]:  # fmt: skip
            assert server.process.poll() is None and time.monotonic() < deadline + 120
            time.sleep(0.2)  # polling the log for the replacement's readiness
        assert asyncio.run(burst(other["key"], 20)) == {200: 20}
        served += 20

        with openai.OpenAI(base_url=server.base_url + "/v1", api_key=other["key"],
                           max_retries=0) as client:  # fmt: skip
            reply = client.chat.completions.create(
                model="ok", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content
        served += 1
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0  # every worker stopped cleanly

    with sqlite3.connect(tmp_path / "data" / "gateway.db") as db:
        rows = db.execute("SELECT request_id, status FROM usage_records").fetchall()
    statuses = Counter(status for _, status in rows)
    assert statuses[200] == served - 10  # every answered request written once, by its worker
    assert len({rid for rid, _ in rows}) == len(rows)
    access = [e for e in _log_entries(log_file) if e.get("event") == "access"]
    assert Counter(e["status"] for e in access)[200] == served - 10  # no log line lost


def test_an_unreachable_database_is_one_line_and_a_failure(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_GATEWAY_")}
    env.update({
        "QWEN_GATEWAY_REDIS__URL": "redis://127.0.0.1:6379/0",
        "QWEN_GATEWAY_DATABASE__URL": f"postgresql://gw:s3cret-pw@127.0.0.1:{port}/gw",
        "COLUMNS": "200",
    })  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "qwen_gateway.cli.main", "serve", "--workers", "2",
         "--engine", "openai", "--upstream-url", "http://127.0.0.1:9/v1",
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Cannot prepare the database before the workers start" in done.stderr
    assert "Traceback" not in done.stderr and "s3cret-pw" not in done.stderr
    assert "Starting" not in done.stderr  # no worker started
