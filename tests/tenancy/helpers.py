"""An in-process gateway with authentication on, over a scripted engine (fast, exact)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from qwen_gateway.engines.scripted import scripted_engine
from support.fixtures import InProcess, open_in_process

REPLY = "The answer is forty-two."  # 7 tokens


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@asynccontextmanager
async def secured(
    tmp_path: Path,
    database_url: str | None = None,
    redis_url: str | None = None,
    models: tuple[str, ...] = ("scripted", "other"),
    **settings: Any,
) -> AsyncIterator[InProcess]:
    tree: dict[str, Any] = {"data_dir": str(tmp_path)}
    if database_url:
        tree["database"] = {"url": database_url}
    if redis_url:
        tree["redis"] = {"url": redis_url}
    tree = _merge(tree, settings)
    engines = {m: scripted_engine(m, [REPLY]) for m in models}
    container = Container(load_settings(tree, env={}), engines=engines)  # type: ignore[arg-type]
    async with open_in_process(container) as g:
        yield g


def client(g: InProcess, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://gateway/v1", api_key=key, http_client=g.http, max_retries=0
    )


async def admin_key(g: InProcess) -> str:
    """An admin key: the one created at first start, or a new one."""
    if g.container.bootstrap_key is not None:
        return g.container.bootstrap_key
    secret, _ = await g.container.store.keys.create("test admin", role="admin")
    return secret


async def new_key(g: InProcess, **body: Any) -> str:
    admin = await admin_key(g)
    resp = await g.http.post(
        "/admin/keys", json={"name": "test", **body}, headers={"Authorization": f"Bearer {admin}"}
    )
    assert resp.status_code == 201, resp.text
    key: str = resp.json()["key"]
    return key


ASK = [{"role": "user", "content": "What is the answer?"}]
