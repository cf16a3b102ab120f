"""The capability table: each deployment's engine abilities, as far as the operator's
``capabilities:`` allow; requests asking for more are a 400 naming the parameter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from routing.helpers import routed
from support.fixtures import InProcess, open_in_process
from support.spec import validate

ASK = [{"role": "user", "content": "Hello"}]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tiny(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[InProcess]:
    """The tiny model twice: as it is, and with logprobs and echo turned off by the operator."""
    model = str(tiny_model_dir)
    tree: dict[str, Any] = {
        "data_dir": str(tmp_path_factory.mktemp("caps")),
        "auth": {"enabled": False},
        "deployments": [
            {"name": "full", "model": model, "max_batch_size": 4},
            {
                "name": "plain",
                "model": model,
                "max_batch_size": 4,
                "capabilities": {"logprobs": False, "echo": False, "tools": False},
            },
        ],
    }
    async with open_in_process(Container(load_settings(tree, env={}))) as g:
        yield g


async def _card(g: InProcess, name: str) -> dict[str, Any]:
    got = await g.http.get(f"/v1/models/{name}")
    assert got.status_code == 200
    card: dict[str, Any] = got.json()
    validate("Model", card)
    return card


@pytest.mark.asyncio(loop_scope="module")
async def test_models_show_the_capability_table(tiny: InProcess) -> None:
    assert (await _card(tiny, "full"))["capabilities"] == {
        "tools": True, "json_schema": True, "logprobs": True, "echo": True,
        "embeddings": False, "responses_storage": False,
    }  # fmt: skip
    assert (await _card(tiny, "plain"))["capabilities"] == {
        "tools": False, "json_schema": True, "logprobs": False, "echo": False,
        "embeddings": False, "responses_storage": False,
    }  # fmt: skip
    listed = (await tiny.http.get("/v1/models")).json()
    validate("ListModelsResponse", listed)
    assert {m["id"]: m["capabilities"]["logprobs"] for m in listed["data"]} == {
        "full": True,
        "plain": False,
    }


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    ("kind", "body", "param"),
    [
        ("chat", {"messages": ASK, "logprobs": True}, "logprobs"),
        ("chat", {"messages": ASK, "logprobs": True, "top_logprobs": 2}, "logprobs"),
        ("completions", {"prompt": "Hi", "logprobs": 1}, "logprobs"),
        ("completions", {"prompt": "Hi", "echo": True}, "echo"),
    ],
)
async def test_asking_what_a_deployment_cannot_do_is_a_400_naming_it(
    tiny: InProcess, kind: str, body: dict[str, Any], param: str
) -> None:
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    got = await tiny.http.post(path, json={"model": "plain", "max_tokens": 2, **body})
    assert got.status_code == 400, got.text
    assert got.json()["error"]["param"] == param
    assert "plain" in got.json()["error"]["message"]
    served = await tiny.http.post(path, json={"model": "full", "max_tokens": 2, **body})
    assert served.status_code == 200, served.text


async def test_engines_without_logprobs_refuse_them_and_echo_text_still_works(
    tmp_path: Path,
) -> None:
    async with routed(tmp_path, [{"name": "scripted"}]) as g:
        card = (await g.http.get("/v1/models/scripted")).json()
        assert card["capabilities"]["logprobs"] is False
        with pytest.raises(openai.BadRequestError) as info:
            await g.client.chat.completions.create(
                model="scripted",
                messages=ASK,
                logprobs=True,
                top_logprobs=1,  # type: ignore[arg-type]
            )
        assert info.value.param == "logprobs"
        with pytest.raises(openai.BadRequestError) as info:
            await g.client.completions.create(model="scripted", prompt="Hi", echo=True, logprobs=0)
        assert info.value.param == "logprobs"
        # echo alone is the gateway's: any engine can
        done = await g.client.completions.create(model="scripted", prompt="Hi ", echo=True)
        assert done.choices[0].text.startswith("Hi ")
        only = await g.client.completions.create(
            model="scripted", prompt="Hi ", echo=True, max_tokens=0
        )
        assert only.choices[0].text == "Hi "
        assert only.usage is not None and only.usage.completion_tokens == 0
