"""Send a workload to one OpenAI-compatible target and time every request.

Closed loop (``concurrency`` clients, each sending its next request when the last one is
answered) or open loop (``rate`` requests per second with Poisson arrivals, at most
``concurrency`` in flight when given: an arrival waits for a free slot, so a server slower
than the rate shows up as arrivals later than planned). The run stops after ``requests`` or
after ``duration`` seconds, whichever comes first; at the time limit the requests still in
flight are cancelled and recorded as ``cancelled`` (not as errors of the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import orjson

from qwen_gateway.bench.workload import (
    Planned,
    PromptMaker,
    Workload,
    arrivals,
    request_body,
)
from qwen_gateway.qwen.tokenizer import QwenTokenizer

Api = Literal["chat", "completions"]


@dataclass(frozen=True)
class Target:
    name: str
    url: str  # the API base, e.g. http://127.0.0.1:8000/v1
    api_key: str | None = None
    model: str | None = None  # None: the first of GET /models


@dataclass(frozen=True)
class Load:
    concurrency: int | None = None  # closed loop; with ``rate``: the cap on requests in flight
    rate: float | None = None  # open loop, requests per second
    duration: float | None = None  # seconds; None: until ``requests`` are done
    timeout: float = 600.0  # per request


@dataclass
class Record:
    """One request, times in seconds since the run's start (``start``) or its own start."""

    index: int
    start: float
    ok: bool = False
    error: str | None = None  # an HTTP status ("429"), "timeout", "connection", ...
    ttft: float | None = None
    e2e: float | None = None
    itl: list[float] = field(default_factory=list)  # gaps between content chunks
    prompt_tokens: int | None = None  # as the server reported them
    output_tokens: int = 0
    usage_reported: bool = False


class BenchError(Exception):
    """The target could not be benchmarked at all (no model to use, a bad URL)."""


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Failed(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class Runner:
    """Runs one workload against one target."""

    def __init__(
        self,
        target: Target,
        workload: Workload,
        load: Load,
        *,
        api: Api = "chat",
        stream: bool = True,
        ignore_eos: bool = False,
        maker: PromptMaker | None = None,
        on_record: Callable[[Record], None] | None = None,
    ) -> None:
        if load.concurrency is None and load.rate is None:
            raise BenchError("give a concurrency, a rate, or both")
        self.target = target
        self.workload = workload
        self.load = load
        self.api: Api = api
        self.stream = stream
        self.ignore_eos = ignore_eos
        self.maker = maker or PromptMaker()
        self.on_record = on_record
        self.records: list[Record] = []
        self.model = target.model or ""
        self.elapsed = 0.0
        self._t0 = 0.0
        self._tok: QwenTokenizer | None = None

    @property
    def _headers(self) -> dict[str, str]:
        if self.target.api_key:
            return {"Authorization": f"Bearer {self.target.api_key}"}
        return {}

    async def run(self) -> list[Record]:
        timeout = aiohttp.ClientTimeout(total=self.load.timeout)
        limit = self.load.concurrency or 0  # 0: aiohttp's "no limit"
        connector = aiohttp.TCPConnector(limit=limit, force_close=False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            if not self.model:
                self.model = await self._first_model(session)
            self._t0 = time.perf_counter()
            drive = asyncio.create_task(self._drive(session))
            done, _ = await asyncio.wait({drive}, timeout=self.load.duration)
            if not done:
                drive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drive
            self.elapsed = time.perf_counter() - self._t0
        self.records.sort(key=lambda r: r.index)
        return self.records

    async def _first_model(self, session: aiohttp.ClientSession) -> str:
        url = self.target.url.rstrip("/") + "/models"
        try:
            async with session.get(url, headers=self._headers) as resp:
                if resp.status != 200:
                    raise BenchError(f"GET {url} answered {resp.status}; pass --model")
                data = orjson.loads(await resp.read())
                return str(data["data"][0]["id"])
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            raise BenchError(f"GET {url} failed ({type(exc).__name__}); pass --model") from None
        except (KeyError, IndexError, TypeError):
            raise BenchError(f"GET {url} listed no model; pass --model") from None

    async def _drive(self, session: aiohttp.ClientSession) -> None:
        plan = self.workload.plan(self.maker)
        if self.load.rate is None:
            assert self.load.concurrency is not None

            async def client() -> None:
                for planned in plan:  # one shared iterator: each request goes to one client
                    await self._one(session, planned)

            async with asyncio.TaskGroup() as group:
                for _ in range(self.load.concurrency):
                    group.create_task(client())
            return
        slots = asyncio.Semaphore(self.load.concurrency) if self.load.concurrency else None
        times = arrivals(self.load.rate, self.workload.seed)
        async with asyncio.TaskGroup() as group:
            for planned, at in zip(plan, times, strict=False):
                delay = self._t0 + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)  # the arrival schedule itself
                if slots is not None:
                    await slots.acquire()
                group.create_task(self._slotted(session, planned, slots))

    async def _slotted(
        self, session: aiohttp.ClientSession, planned: Planned, slots: asyncio.Semaphore | None
    ) -> None:
        try:
            await self._one(session, planned)
        finally:
            if slots is not None:
                slots.release()

    async def _one(self, session: aiohttp.ClientSession, planned: Planned) -> None:
        start = time.perf_counter()
        record = Record(index=planned.index, start=start - self._t0)
        body = request_body(
            planned, model=self.model, api=self.api, stream=self.stream, ignore_eos=self.ignore_eos
        )
        path = "/chat/completions" if self.api == "chat" else "/completions"
        try:
            async with session.post(
                self.target.url.rstrip("/") + path, data=orjson.dumps(body),
                headers={**self._headers, "Content-Type": "application/json"},
            ) as resp:  # fmt: skip
                if resp.status != 200:
                    await resp.read()
                    raise _Failed(str(resp.status))
                if self.stream:
                    await self._read_stream(resp, record, start)
                else:
                    self._read_body(await resp.read(), record)
            record.e2e = time.perf_counter() - start
            record.ok = True
        except _Failed as failed:
            record.error = failed.code
        except TimeoutError:
            record.error = "timeout"
        except aiohttp.ClientPayloadError:
            record.error = "incomplete_response"
        except aiohttp.ClientError:
            record.error = "connection"
        except asyncio.CancelledError:
            record.error = "cancelled"
            raise
        finally:
            self.records.append(record)
            if self.on_record is not None:
                self.on_record(record)

    def _read_body(self, raw: bytes, record: Record) -> None:
        try:
            data = orjson.loads(raw)
            choice = data["choices"][0]
            text = choice["message"].get("content") if self.api == "chat" else choice["text"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise _Failed("invalid_response") from None
        self._usage(data.get("usage"), record, text or "")

    async def _read_stream(
        self, resp: aiohttp.ClientResponse, record: Record, start: float
    ) -> None:
        last: float | None = None
        text: list[str] = []
        usage: Any = None
        finished = False
        async for line in resp.content:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                finished = True
                break
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise _Failed("invalid_response") from None
            if not isinstance(chunk, dict):
                raise _Failed("invalid_response")
            if "error" in chunk:  # an in-stream error frame
                raise _Failed("stream_error")
            usage = chunk.get("usage") or usage
            piece = _chunk_text(chunk, self.api)
            if piece:
                now = time.perf_counter()
                if last is None:
                    record.ttft = now - start
                else:
                    record.itl.append(now - last)
                last = now
                text.append(piece)
        if not finished:
            raise _Failed("incomplete_response")
        self._usage(usage, record, "".join(text))

    def _usage(self, usage: Any, record: Record, text: str) -> None:
        """Output tokens as the server counted them, else counted here with the Qwen2.5
        tokenizer (an estimate for other models' servers)."""
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            record.output_tokens = usage["completion_tokens"]
            prompt = usage.get("prompt_tokens")
            record.prompt_tokens = prompt if isinstance(prompt, int) else None
            record.usage_reported = True
            return
        if self._tok is None:
            self._tok = QwenTokenizer.builtin()
        record.output_tokens = self._tok.count_text(text)


def _chunk_text(chunk: dict[str, Any], api: Api) -> str:
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    if api == "completions":
        text = choice.get("text")
        return text if isinstance(text, str) else ""
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return ""
    content = delta.get("content")
    if isinstance(content, str) and content:
        return content
    calls = delta.get("tool_calls")  # a tool call's arguments are output too
    if not isinstance(calls, list):
        return ""
    parts = [c.get("function") for c in calls if isinstance(c, dict)]
    return "".join(
        str(f.get("name") or "") + str(f.get("arguments") or "")
        for f in parts
        if isinstance(f, dict)
    )
