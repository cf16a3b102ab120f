"""Embeddings requests pass the same stages as generation: usage rows (prompt tokens, no
completion tokens), a key's limits, the input safety policy. In-process gateway with
authentication on and the tiny embedding model on the in-process engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from qwen_gateway.engines.transformers.tiny import build_tiny_model
from support.fixtures import InProcess, open_in_process
from tenancy.helpers import admin_key, client, new_key

EMBED = "embed"
TEXTS = ["The quick brown fox", "jumps over the lazy dog."]


@pytest.fixture(scope="module")
def embed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-embed"), seed=1, embedding=True)


@asynccontextmanager
async def embedding_gateway(
    tmp_path: Path, embed_dir: Path, **settings: Any
) -> AsyncIterator[InProcess]:
    tree: dict[str, Any] = {
        "data_dir": str(tmp_path),
        "deployments": [{"name": EMBED, "task": "embed", "model": str(embed_dir)}],
        **settings,
    }
    async with open_in_process(Container(load_settings(tree, env={}))) as g:
        yield g


async def _embed(g: InProcess, key: str, texts: list[str] = TEXTS, **body: Any) -> Any:
    return await g.http.post(
        "/v1/embeddings",
        json={"model": EMBED, "input": texts, "encoding_format": "float", **body},
        headers={"Authorization": f"Bearer {key}"},
    )


async def test_usage_rows_count_the_inputs_as_prompt_tokens(
    tmp_path: Path, embed_dir: Path
) -> None:
    async with embedding_gateway(tmp_path, embed_dir) as g:
        admin = {"Authorization": f"Bearer {await admin_key(g)}"}
        key = await new_key(g)
        resp = await _embed(g, key)
        assert resp.status_code == 200, resp.text
        tokens = resp.json()["usage"]["prompt_tokens"]
        assert tokens > len(TEXTS)
        refused = await _embed(g, key, dimensions=65)  # the engine refuses it
        assert refused.status_code == 400
        await g.container.store.writer.flush()
        ids = await g.container.store.usage.request_ids()
        assert {resp.headers["x-request-id"], refused.headers["x-request-id"]} <= ids
        report = await g.http.get("/admin/usage?group_by=key,model", headers=admin)
        rows = [r for r in report.json()["data"] if r["model"] == EMBED]
        assert len(rows) == 1
        assert rows[0]["requests"] == 2 and rows[0]["errors"] == 1
        assert rows[0]["prompt_tokens"] == tokens
        assert rows[0]["completion_tokens"] == 0


async def test_a_keys_request_and_token_limits_apply_to_embeddings(
    tmp_path: Path, embed_dir: Path
) -> None:
    async with embedding_gateway(tmp_path, embed_dir) as g:
        per_request = (await _embed(g, await new_key(g))).json()["usage"]["prompt_tokens"]
        once = await new_key(g, rpm=1)
        assert (await _embed(g, once)).status_code == 200
        with pytest.raises(openai.RateLimitError):
            await client(g, once).embeddings.create(model=EMBED, input=TEXTS)
        # tokens: room for one request's inputs, not two (counted before the engine runs)
        tpm = await new_key(g, tpm=2 * per_request - 1)
        first = await _embed(g, tpm)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-tokens"] == str(2 * per_request - 1)
        second = await _embed(g, tpm)
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "rate_limit_exceeded"
        budget = await new_key(g, daily_tokens=per_request)
        assert (await _embed(g, budget)).status_code == 200
        spent = await _embed(g, budget)
        assert spent.status_code == 429
        assert spent.json()["error"]["code"] == "insufficient_quota"


SAFETY = {
    "rule_sets": {"x": {"keywords": {"pets": ["hamster"], "secret": ["project bluebird"]}}},
    "policies": [{"name": "a", "rule_sets": ["x"],
                  "actions": {"pets": "block", "secret": "redact"}}],
}  # fmt: skip


async def test_the_input_policy_reads_every_text_input(tmp_path: Path, embed_dir: Path) -> None:
    async with embedding_gateway(tmp_path, embed_dir, safety=SAFETY) as g:
        key = await new_key(g)
        blocked = await _embed(g, key, ["fine", "my hamster"])
        assert blocked.status_code == 400
        error = blocked.json()["error"]
        assert error["code"] == "content_filter" and "pets" in error["message"]
        assert "hamster" not in error["message"]
        redacted = await _embed(g, key, ["about project bluebird"])
        masked = await _embed(g, key, ["about " + "*" * len("project bluebird")])
        assert redacted.status_code == masked.status_code == 200
        assert redacted.json()["data"][0]["embedding"] == masked.json()["data"][0]["embedding"]
        ids = await g.http.post(
            "/v1/embeddings",
            json={"model": EMBED, "input": [1, 2, 3]},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert ids.status_code == 400 and ids.json()["error"]["param"] == "input"
