"""An engine that relays to any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp, Ollama).

Chat requests pass through as messages; the upstream's streamed chunks become engine events,
so the gateway shapes responses, parses raw ``<tool_call>`` text and checks JSON the same way
for every engine. Failures before the first byte keep proper status codes (and are retried on
connect errors and 429/502/503 with backoff, honouring Retry-After); after it they end the
stream with an in-stream error. Closing the event stream closes the upstream connection.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from qwen_gateway.core.types import (
    ChatMessage,
    ChatRequest,
    ChoiceFinished,
    EngineEvent,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    SamplingParams,
    TextDelta,
    TextRequest,
    ToolCallDelta,
    Usage,
)
from qwen_gateway.engines.base import EngineStats
from qwen_gateway.engines.output import checked_json, new_call_id, with_tool_calls
from qwen_gateway.errors import (
    AuthenticationFailed,
    ContextLengthExceeded,
    EngineUnavailable,
    GatewayError,
    GatewayTimeout,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    UnprocessableEntity,
    UpstreamError,
)
from qwen_gateway.qwen.template import ChatTemplate, packaged_template_source
from qwen_gateway.qwen.tokenizer import QwenTokenizer

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 502, 503})
MAX_RETRY_AFTER = 30.0
_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    base_url: str  # e.g. http://127.0.0.1:8001/v1
    served_name: str
    model: str | None = None  # the upstream's model name; defaults to served_name
    api_key: str | None = None
    connect_timeout: float = 5.0
    first_token_timeout: float = 120.0
    idle_timeout: float = 60.0
    total_timeout: float = 1800.0
    max_retries: int = 2
    backoff: float = 0.2
    max_connections: int = 1024
    context_window: int = 131072
    max_output_tokens: int = 8192
    health_interval: float = 5.0


@dataclass
class _Call:
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class _Choice:
    parts: list[str] = field(default_factory=list)  # content, to count usage if none is sent
    calls: dict[int, _Call] = field(default_factory=dict)


class OpenAIUpstreamEngine:
    """Implements :class:`~qwen_gateway.engines.base.Engine` over an OpenAI-compatible server."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self._info = ModelInfo(
            id=config.served_name,
            context_window=config.context_window,
            max_output_tokens=config.max_output_tokens,
            created=int(time.time()),
            owned_by="upstream",
        )
        self._client: httpx.AsyncClient | None = None
        self._tokenizer: QwenTokenizer | None = None
        self._template: ChatTemplate | None = None
        self._healthy = False
        self._probe: asyncio.Task[None] | None = None
        self._active = 0
        self._aborted = 0
        self._malformed = 0

    @property
    def info(self) -> ModelInfo:
        return self._info

    # ---- lifecycle --------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self._client = httpx.AsyncClient(
            base_url=cfg.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(None, connect=cfg.connect_timeout),
            limits=httpx.Limits(
                max_connections=cfg.max_connections, max_keepalive_connections=cfg.max_connections
            ),
        )
        self._tokenizer = await asyncio.to_thread(QwenTokenizer.builtin)
        self._template = ChatTemplate(packaged_template_source())
        await self._check_health()
        self._probe = asyncio.create_task(self._probe_loop())

    async def ready(self) -> bool:
        return self._healthy

    def stats(self) -> EngineStats:
        return EngineStats(
            running=self._active, aborted=self._aborted, malformed_tool_calls=self._malformed
        )

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self._client is not None:
            await self._client.aclose()

    async def _check_health(self) -> None:
        assert self._client is not None
        root = self.config.base_url.rstrip("/").removesuffix("/v1")
        for url in (root + "/health", "/models"):
            try:
                resp = await self._client.get(url, timeout=self.config.connect_timeout)
            except httpx.HTTPError:
                continue
            if resp.status_code == 200:
                self._healthy = True
                return
        self._healthy = False

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval)
            await self._check_health()

    # ---- requests ---------------------------------------------------------

    def stream(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        events = self._relay(request)
        if isinstance(request, ChatRequest):
            constraint = request.constraint
            if constraint is not None and constraint.kind == "json":
                events = checked_json(events, constraint.schema)
            if request.tools:
                events = with_tool_calls(events, request.tool_names, self._count_malformed)
        return events

    def _count_malformed(self, n: int) -> None:
        self._malformed += n

    def _body(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.config.model or self.config.served_name,
            "stream": True,
            "stream_options": {"include_usage": True},
            "n": request.n,
            **_sampling(request.sampling),
        }
        if isinstance(request, TextRequest):
            prompt = request.prompt
            body["prompt"] = prompt if isinstance(prompt, str) else list(prompt)
            return "/completions", body
        body["messages"] = [_wire_message(m) for m in request.messages]
        if request.tools:
            body["tools"] = list(request.tools)
            choice = request.tool_choice
            if choice.mode == "named":
                body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
            else:
                body["tool_choice"] = choice.mode
        constraint = request.constraint
        if constraint is not None and constraint.kind == "json":
            if constraint.schema is None:
                body["response_format"] = {"type": "json_object"}
            else:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": constraint.schema, "strict": True},
                }
        return "/chat/completions", body

    async def _relay(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        client = self._client
        if client is None:
            raise EngineUnavailable("The upstream engine is not started.")
        path, body = self._body(request)
        cfg = self.config
        deadline = time.monotonic() + cfg.total_timeout
        choices: dict[int, _Choice] = {}
        usage: Usage | None = None
        self._active += 1
        finished = False
        try:
            async with self._open(client, path, body) as lines:
                first = True
                while True:
                    limit = cfg.first_token_timeout if first else cfg.idle_timeout
                    limit = min(limit, deadline - time.monotonic())
                    try:
                        async with asyncio.timeout(limit):
                            line = await anext(lines)
                    except StopAsyncIteration:
                        raise UpstreamError("The upstream closed the stream early.") from None
                    except TimeoutError:
                        what = "first token" if first else "next token"
                        raise GatewayTimeout(
                            f"The upstream timed out waiting for the {what}."
                        ) from None
                    except httpx.HTTPError as exc:
                        raise UpstreamError(
                            f"The upstream stream failed: {type(exc).__name__}."
                        ) from None
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except json.JSONDecodeError:
                        raise UpstreamError("The upstream sent an invalid stream chunk.") from None
                    if not isinstance(chunk, dict):
                        raise UpstreamError("The upstream sent an invalid stream chunk.")
                    if "error" in chunk:
                        raise _error_from_body(502, chunk)
                    first = False
                    for event in _events(chunk, choices):
                        yield event
                    if isinstance(chunk.get("usage"), dict):
                        u = chunk["usage"]
                        usage = Usage(
                            int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0))
                        )
            for index, state in choices.items():
                for event in _flush_calls(index, state):
                    yield event
            finished = True
            yield usage or self._count_usage(request, choices)
        finally:
            self._active -= 1
            if not finished:
                self._aborted += 1

    def _count_usage(self, request: GenerationRequest, choices: Mapping[int, _Choice]) -> Usage:
        """Usage counted with the Qwen tokenizer, for upstreams that report none."""
        tokenizer, template = self._tokenizer, self._template
        assert tokenizer is not None and template is not None
        if isinstance(request, ChatRequest):
            prompt = len(tokenizer.encode_pieces(template.render(request.messages, request.tools)))
        elif isinstance(request.prompt, str):
            prompt = len(tokenizer.encode_raw(request.prompt))
        else:
            prompt = len(request.prompt)
        completion = sum(
            len(tokenizer.encode_raw("".join(c.parts)))
            + sum(
                len(tokenizer.encode_text(call.name + call.arguments)) for call in c.calls.values()
            )
            for c in choices.values()
        )
        return Usage(prompt, completion)

    def _open(self, client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> _UpstreamStream:
        return _UpstreamStream(client, path, body, self.config)


class _UpstreamStream:
    """``async with``: POST with retries before the first byte; yields the SSE lines."""

    def __init__(
        self, client: httpx.AsyncClient, path: str, body: dict[str, Any], cfg: UpstreamConfig
    ) -> None:
        self._client = client
        self._path = path
        self._body = body
        self._cfg = cfg
        self._response: httpx.Response | None = None

    async def __aenter__(self) -> AsyncIterator[str]:
        cfg = self._cfg
        attempt = 0
        while True:
            request = self._client.build_request("POST", self._path, json=self._body)
            try:
                async with asyncio.timeout(cfg.first_token_timeout):
                    response = await self._client.send(request, stream=True)
            except TimeoutError:
                raise GatewayTimeout("The upstream did not answer in time.") from None
            except httpx.ConnectTimeout:
                error: GatewayError = GatewayTimeout(
                    "The upstream did not accept the connection in time."
                )
                retry_after = None
            except httpx.TransportError as exc:
                error = UpstreamError(f"Could not reach the upstream: {type(exc).__name__}.")
                retry_after = None
            else:
                if response.status_code < 400:
                    self._response = response
                    return response.aiter_lines()
                raw = await _read_capped(response)
                await response.aclose()
                error = _error_from_body(response.status_code, raw, response.headers)
                if response.status_code not in RETRYABLE_STATUS:
                    raise error
                retry_after = _retry_after(response.headers)
            if attempt >= cfg.max_retries or (retry_after or 0) > MAX_RETRY_AFTER:
                raise error
            attempt += 1
            await asyncio.sleep(
                retry_after if retry_after is not None else cfg.backoff * 2 ** (attempt - 1)
            )

    async def __aexit__(self, *exc: object) -> None:
        if self._response is not None:
            await self._response.aclose()


def _sampling(p: SamplingParams) -> dict[str, Any]:
    out: dict[str, Any] = {"temperature": p.temperature, "top_p": p.top_p}
    if p.max_tokens is not None:
        out["max_tokens"] = p.max_tokens
    if p.presence_penalty:
        out["presence_penalty"] = p.presence_penalty
    if p.frequency_penalty:
        out["frequency_penalty"] = p.frequency_penalty
    if p.seed is not None:
        out["seed"] = p.seed
    if p.stop:
        out["stop"] = list(p.stop)
    if p.top_k != -1:
        out["top_k"] = p.top_k
    if p.repetition_penalty != 1.0:
        out["repetition_penalty"] = p.repetition_penalty
    return out


def _wire_message(m: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.name,
                    "arguments": c.arguments
                    if isinstance(c.arguments, str)
                    else json.dumps(c.arguments, ensure_ascii=False),
                },
            }
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


def _events(chunk: Mapping[str, Any], choices: dict[int, _Choice]) -> list[EngineEvent]:
    out: list[EngineEvent] = []
    for item in chunk.get("choices") or ():
        if not isinstance(item, dict):
            continue
        index = int(item.get("index", 0))
        state = choices.setdefault(index, _Choice())
        delta = item.get("delta")
        text = item.get("text")  # legacy completions chunks
        if isinstance(delta, dict):
            text = delta.get("content")
            for call in delta.get("tool_calls") or ():
                slot = state.calls.setdefault(int(call.get("index", 0)), _Call())
                fn = call.get("function") or {}
                slot.id = call.get("id") or slot.id
                slot.name += fn.get("name") or ""
                slot.arguments += fn.get("arguments") or ""
        if isinstance(text, str) and text:
            state.parts.append(text)
            out.append(TextDelta(index, text))
        reason = item.get("finish_reason")
        if reason:
            out.extend(_flush_calls(index, state))
            out.append(ChoiceFinished(index, _FINISH.get(str(reason), "stop")))
    return out


def _flush_calls(index: int, state: _Choice) -> list[EngineEvent]:
    out: list[EngineEvent] = []
    for n, call in sorted(state.calls.items()):
        arguments = call.arguments or "{}"
        out.append(ToolCallDelta(index, n, call.id or new_call_id(), call.name, arguments))
    state.calls.clear()
    return out


async def _read_capped(response: httpx.Response, cap: int = 64 * 1024) -> Any:
    data = b""
    async for piece in response.aiter_bytes():
        data += piece
        if len(data) > cap:
            break
    try:
        return json.loads(data[:cap])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _error_from_body(status: int, raw: Any, headers: httpx.Headers | None = None) -> GatewayError:
    """Map an upstream error to ours by status and error type/code, never by message text."""
    err = raw.get("error") if isinstance(raw, dict) else None
    if not isinstance(err, dict):
        err = raw if isinstance(raw, dict) else {}
    message = err.get("message") if isinstance(err.get("message"), str) else None
    message = message or f"The upstream answered {status}."
    param = err.get("param") if isinstance(err.get("param"), str) else None
    code = err.get("code") if isinstance(err.get("code"), str) else None
    extra = {}
    if headers is not None and headers.get("retry-after"):
        extra["Retry-After"] = headers["retry-after"]
    if status == 400:
        if code == "context_length_exceeded":
            return ContextLengthExceeded(message, param=param)
        return InvalidRequest(message, param=param, code=code)
    if status == 401:
        return AuthenticationFailed(message)
    if status == 403:
        return PermissionDenied(message, param=param, code=code)
    if status == 404:
        return ModelNotFound(message, param=param)
    if status == 413:
        return PayloadTooLarge(message)
    if status == 422:
        return UnprocessableEntity(message, param=param, code=code)
    if status == 429:
        return RateLimited(message, code=code, headers=extra)
    if status == 503:
        return EngineUnavailable(message, headers=extra)
    if status == 504:
        return GatewayTimeout(message)
    if 400 <= status < 500:
        return InvalidRequest(message, param=param, code=code)
    return UpstreamError(message)


def create_engine(options: Mapping[str, Any]) -> OpenAIUpstreamEngine:
    """Entry point ``qwen_gateway.engines: openai``; options as in UpstreamConfig."""
    return OpenAIUpstreamEngine(UpstreamConfig(**options))
