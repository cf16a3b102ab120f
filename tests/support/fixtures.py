"""App, client and server fixtures (registered from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import pytest_asyncio
from fastapi import FastAPI

from qwen_gateway.api.app import create_app
from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from support.server import Server, running_server

MODEL = "qwen2.5-tiny"


@dataclass
class InProcess:
    app: FastAPI
    container: Container
    http: httpx.AsyncClient
    client: openai.AsyncOpenAI


def make_container(model_dir: Path, data_dir: Path, **model: object) -> Container:
    settings = load_settings(
        {
            "data_dir": str(data_dir),
            "auth": {"enabled": False},
            "model": {"model": str(model_dir), "served_name": MODEL, **model},
        },
        env={},
    )
    return Container(settings)


@asynccontextmanager
async def open_in_process(container: Container) -> AsyncIterator[InProcess]:
    app = create_app(container)
    async with app.router.lifespan_context(app):
        await container.wait_loaded()
        assert await container.ready(), container.load_error
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            client = openai.AsyncOpenAI(
                base_url="http://gateway/v1", api_key="unused", http_client=http, max_retries=0
            )
            yield InProcess(app, container, http, client)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gateway(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[InProcess]:
    """The app in-process (ASGI transport) with the tiny model, shared by the session."""
    container = make_container(tiny_model_dir, tmp_path_factory.mktemp("data"))
    async with open_in_process(container) as g:
        yield g


@pytest.fixture(scope="session")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``qwen-gateway serve`` subprocess on 127.0.0.1."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(tiny_model_dir, log) as s:
        yield s
