"""The prompt pipeline: text far beyond the window is refused untokenised, long prompts are
tokenised off the event loop, and a tokenizer panic is a 400."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from qwen_gateway.engines.prompt import PromptEngine
from qwen_gateway.engines.scripted import ScriptedBackend
from qwen_gateway.qwen.limits import PROMPT_CHARS_PER_TOKEN
from qwen_gateway.qwen.tokenizer import THREAD_MIN_CHARS, QwenTokenizer
from support.fixtures import InProcess, open_in_process
from support.spec import validate

NAME = "scripted-qwen"
WINDOW = 262_144  # large enough that a million spaces is not refused by size


class Tokenizer:
    """The real tokenizer, counting prompt encodings; ``hold`` blocks them until released."""

    def __init__(self, hold: bool = False) -> None:
        self._real = QwenTokenizer.builtin()
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()
        self.released_in_time = False
        self._hold = hold

    def encode_pieces(self, pieces: Any) -> list[int]:
        self.calls += 1
        if self._hold:
            self.started.set()
            # released by the test once /health has answered; the timeout only ends a test
            # that failed (the event loop stuck in here cannot answer /health)
            self.released_in_time = self.release.wait(timeout=30)
        return self._real.encode_pieces(pieces)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@asynccontextmanager
async def scripted(tmp_path: Path, tokenizer: Any = None) -> AsyncIterator[InProcess]:
    """The gateway over a scripted engine whose prompts ``tokenizer`` encodes."""
    backend = ScriptedBackend(NAME, ["ok"], context_window=WINDOW)
    settings = load_settings({"data_dir": str(tmp_path), "auth": {"enabled": False}}, env={})
    container = Container(settings, engines={NAME: PromptEngine(backend, tokenizer)})
    async with open_in_process(container) as g:
        yield g


def _chat(content: str) -> dict[str, Any]:
    return {"model": NAME, "max_tokens": 2, "messages": [{"role": "user", "content": content}]}


async def test_a_million_spaces_is_a_400_in_the_envelope(tmp_path: Path) -> None:
    async with scripted(tmp_path) as g:
        resp = await g.http.post("/v1/chat/completions", json=_chat(" " * 1_000_000))
        assert resp.status_code == 400, resp.text
        validate("ErrorResponse", resp.json())
        assert resp.json()["error"]["type"] == "invalid_request_error"
        resp = await g.http.post("/v1/completions", json={"model": NAME, "prompt": " " * 10**6})
        assert resp.status_code == 400, resp.text
        validate("ErrorResponse", resp.json())
        assert (await g.http.post("/v1/chat/completions", json=_chat("hi"))).status_code == 200


async def test_text_far_beyond_the_window_is_refused_before_tokenising(tmp_path: Path) -> None:
    counting = Tokenizer()
    async with scripted(tmp_path, counting) as g:
        resp = await g.http.post(
            "/v1/chat/completions", json=_chat("x" * (WINDOW * PROMPT_CHARS_PER_TOKEN + 1))
        )
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "context_length_exceeded"
        assert counting.calls == 0
        assert (await g.http.post("/v1/chat/completions", json=_chat("hi"))).status_code == 200
        assert counting.calls == 1


async def test_a_long_prompt_is_tokenised_while_health_answers(tmp_path: Path) -> None:
    held = Tokenizer(hold=True)
    async with scripted(tmp_path, held) as g:
        chat = asyncio.create_task(
            g.http.post("/v1/chat/completions", json=_chat("word " * THREAD_MIN_CHARS))
        )
        try:
            while not held.started.is_set():  # the tokenizer is at work on the prompt
                assert not chat.done(), chat.result().text
                await asyncio.sleep(0.01)
            health = await g.http.get("/health")
            assert health.status_code == 200
            held.release.set()
            resp = await chat
        finally:
            held.release.set()
        assert held.released_in_time  # /health answered while tokenisation was blocked
        assert resp.status_code == 200, resp.text
