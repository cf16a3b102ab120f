"""Hot reload of the content-safety policies on a real server process, under load: SIGHUP and
``POST /admin/safety/reload`` swap the policies while streams run, and no request fails."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from support.server import free_port, running_command

REPLY = "One gerbil, one hamster and one ferret went for a walk."


def write_config(path: Path, banned: list[str]) -> None:
    config: dict[str, Any] = {
        "model": {"engine": "scripted", "served_name": "m", "options": {"replies": [REPLY]}},
        "safety": {
            "rule_sets": {"pets": {"keywords": {"pets": banned}}},
            "policies": [{"name": "pets", "rule_sets": ["pets"]}],
        },
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")


async def streamed(client: openai.AsyncOpenAI) -> tuple[str, str | None]:
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "a walk"}], stream=True
    )
    text, reason = "", None
    async for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            reason = c.finish_reason or reason
    return text, reason


async def until(client: openai.AsyncOpenAI, expected: str, results: list[Any]) -> None:
    """Requests until one shows the new policies (each result kept for the final check)."""
    for _ in range(500):
        text, reason = await streamed(client)
        results.append((text, reason))
        if text == expected:
            return
    raise AssertionError(f"the reload never took effect: last answer {text!r}")


def test_sighup_and_the_admin_api_reload_without_failing_a_request(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    write_config(config, ["ferret"])
    port = free_port()
    old = "One gerbil, one hamster and one "
    middle = "One gerbil, one "
    new = "One "
    with running_command(["--config", str(config), "--port", str(port)], port,
                         tmp_path / "server.log") as server:  # fmt: skip

        async def scenario() -> list[Any]:
            results: list[Any] = []
            client = openai.AsyncOpenAI(
                base_url=server.base_url + "/v1", api_key="unused", max_retries=0
            )
            stop = asyncio.Event()

            async def load() -> None:  # streams running all along
                while not stop.is_set():
                    results.append(await streamed(client))

            workers = [asyncio.create_task(load()) for _ in range(4)]
            try:
                assert await streamed(client) == (old, "content_filter")
                write_config(config, ["hamster"])
                server.process.send_signal(signal.SIGHUP)
                await until(client, middle, results)
                write_config(config, ["gerbil"])
                async with httpx.AsyncClient(base_url=server.base_url) as http:
                    r = await http.post("/admin/safety/reload")
                    assert r.status_code == 200, r.text
                    assert r.json()["generation"] == 3
                assert await streamed(client) == (new, "content_filter")
                config.write_text("safety: [not, a, mapping", encoding="utf-8")
                server.process.send_signal(signal.SIGHUP)  # a broken file: the old ones stay
                async with httpx.AsyncClient(base_url=server.base_url) as http:
                    r = await http.post("/admin/safety/reload")
                    assert r.status_code == 400
                assert await streamed(client) == (new, "content_filter")
            finally:
                stop.set()
                await asyncio.gather(*workers)  # a failed request fails the test here
                await client.close()
            return results

        results = asyncio.run(scenario())
        assert len(results) > 4
        # every answer was cut under one policy or another, never delivered a banned word
        assert {r for r in results} <= {(old, "content_filter"), (middle, "content_filter"),
                                         (new, "content_filter")}  # fmt: skip
