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
import sys
import time
from array import array
from collections.abc import AsyncGenerator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import orjson
from pydantic import Field, SecretStr

from qwen_gateway.core.jsonbytes import dumps
from qwen_gateway.core.redact import strip_userinfo
from qwen_gateway.core.types import (
    ChatMessage,
    ChatRequest,
    ChoiceFinished,
    EmbeddingRequest,
    EmbeddingResult,
    EngineEvent,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    PromptLogprobs,
    RelayedChunk,
    SamplingParams,
    TextDelta,
    TextRequest,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from qwen_gateway.engines.base import QUIET, EngineHealth, EngineObserver
from qwen_gateway.engines.output import (
    checked_json,
    checked_tool_calls,
    new_call_id,
    with_tool_calls,
)
from qwen_gateway.engines.plugin import (
    DEFAULT_CONTEXT_WINDOW,
    EngineConfig,
    EngineContext,
    EnginePlugin,
)
from qwen_gateway.errors import (
    ContextLengthExceeded,
    EngineUnavailable,
    GatewayError,
    GatewayTimeout,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    RateLimited,
    UnprocessableEntity,
    UpstreamError,
)
from qwen_gateway.qwen.counting import count_prompt_tokens
from qwen_gateway.qwen.template import ChatTemplate, packaged_template_source
from qwen_gateway.qwen.tokenizer import QwenTokenizer

log = logging.getLogger(__name__)

_Plain = TextDelta | ToolCallDelta | ChoiceFinished | PromptLogprobs
RETRYABLE_STATUS = frozenset({429, 502, 503})
MAX_RETRY_AFTER = 30.0
_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


class UpstreamConfig(EngineConfig):
    """An ``engine: openai`` deployment: its ``upstream`` section, with the deployment's
    ``model`` (the upstream's name, when ``upstream.model`` is not set), ``context_window``
    and ``max_output_tokens``."""

    base_url: str = "http://127.0.0.1:8001/v1"
    model: str | None = None  # the upstream's model name; defaults to the served name
    api_key: SecretStr | None = None
    connect_timeout: float = Field(default=5.0, gt=0)
    first_token_timeout: float = Field(default=120.0, gt=0)
    idle_timeout: float = Field(default=60.0, gt=0)
    total_timeout: float = Field(default=1800.0, gt=0)
    max_retries: int = Field(default=2, ge=0)
    backoff: float = Field(default=0.2, ge=0)
    max_connections: int = Field(default=1024, ge=1)
    context_window: int = Field(default=DEFAULT_CONTEXT_WINDOW, ge=16)
    max_output_tokens: int = Field(default=8192, ge=1)
    max_response_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    #: ``embed``: the upstream model is an embedding model (served at /v1/embeddings)
    task: Literal["generate", "embed"] = "generate"
    #: the upstream model takes ``dimensions`` (passed through); otherwise a 400 here
    supports_dimensions: bool = False
    #: The upstream returns token logprobs when asked (OpenAI, vLLM, SGLang do): they are
    #: passed through. Off: requests asking for them are refused (400) here.
    logprobs: bool = True
    #: The upstream serves completions ``echo`` (vLLM does; OpenAI's chat models do not).
    echo: bool = False

    def expected_info(self, ctx: EngineContext) -> ModelInfo:
        return _model_info(self, ctx.served_name)


def _model_info(config: UpstreamConfig, served_name: str) -> ModelInfo:
    return ModelInfo(
        id=served_name,
        context_window=config.context_window,
        max_output_tokens=config.max_output_tokens,
        created=int(time.time()),
        owned_by="upstream",
        supports_tools=config.task == "generate",
        task=config.task,
        supports_dimensions=config.supports_dimensions,
        supports_logprobs=config.logprobs,
        supports_echo=config.echo,
    )


@dataclass
class _Call:
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class _Choice:
    parts: list[str] = field(default_factory=list)  # content, to count usage if none is sent
    calls: dict[int, _Call] = field(default_factory=dict)
    sent_calls: list[str] = field(default_factory=list)  # name + arguments of calls sent on
    echoed: int = 0  # characters of the echoed prompt read so far (completions echo)


@dataclass
class _Echo:
    """The upstream echoes the prompt (asked for its logprobs): its first ``chars``
    characters of each choice, and the logprobs of their tokens, are the prompt's."""

    chars: int
    sent: bool = False  # the prompt's logprobs went out (once, for every choice)


class OpenAIUpstreamEngine:
    """Implements :class:`~qwen_gateway.engines.base.Engine` over an OpenAI-compatible server.

    Built by :meth:`open`, which has checked the upstream's health once and probes it every
    ``health_interval`` seconds from then on.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        served_name: str,
        *,
        health_interval: float = 5.0,
        observer: EngineObserver = QUIET,
    ) -> None:
        self.config = config
        self.served_name = served_name
        self._health_interval = health_interval
        self._observer = observer
        self._info = _model_info(config, served_name)
        base = config.base_url.rstrip("/")
        self._urls = {
            "/chat/completions": base + "/chat/completions",
            "/completions": base + "/completions",
            "/embeddings": base + "/embeddings",
        }
        self._health_urls = (base.removesuffix("/v1") + "/health", base + "/models")
        self.upstream_model = config.model or served_name
        self._model_bytes = (
            b'"model":' + orjson.dumps(self.upstream_model),
            b'"model":' + orjson.dumps(served_name),
        )
        cfg = self.config
        headers = {"Content-Type": "application/json"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key.get_secret_value()}"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=cfg.max_connections, ttl_dns_cache=300),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout),
            read_bufsize=2**20,  # SSE lines up to 2 MiB (aiohttp allows twice the buffer)
            auto_decompress=True,
        )
        self._tokenizer: QwenTokenizer | None = None
        self._template = ChatTemplate(packaged_template_source())
        self._healthy = False
        self._probe: asyncio.Task[None] | None = None
        self._active = 0
        observer.watch_load(lambda: (self._active, 0))

    @classmethod
    async def open(
        cls,
        config: UpstreamConfig,
        served_name: str,
        *,
        health_interval: float = 5.0,
        observer: EngineObserver = QUIET,
    ) -> OpenAIUpstreamEngine:
        """The engine, its upstream's health checked once and then probed in the background."""
        engine = cls(config, served_name, health_interval=health_interval, observer=observer)
        try:
            await engine._check_health()
        except BaseException:
            await engine.aclose()
            raise
        engine._probe = asyncio.create_task(engine._probe_loop())
        return engine

    @property
    def info(self) -> ModelInfo:
        return self._info

    # ---- lifecycle --------------------------------------------------------

    async def health(self) -> EngineHealth:
        return EngineHealth(ready=self._healthy)

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with suppress(asyncio.CancelledError):
                await self._probe
        await self._session.close()

    async def _check_health(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.connect_timeout)
        for url in self._health_urls:
            try:
                async with self._session.get(url, timeout=timeout) as resp:
                    await resp.read()
                    if resp.status == 200:
                        self._healthy = True
                        return
            except (aiohttp.ClientError, TimeoutError):
                continue
        self._healthy = False

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval)
            await self._check_health()

    # ---- requests ---------------------------------------------------------

    def stream(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        events = self._relay(request)
        if isinstance(request, ChatRequest):
            constraint = request.constraint
            if constraint is not None and constraint.kind == "json":
                events = checked_json(events, constraint.schema)
            if request.tools:
                events = with_tool_calls(
                    events, request.tool_names, self._observer.malformed_tool_calls
                )
            if constraint is not None and constraint.kind == "tool_calls":
                events = checked_tool_calls(events, constraint.tools)
        return events

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """The upstream's /v1/embeddings, the model name mapped; vectors asked for as floats
        and kept as float32, as the in-process engine gives them."""
        if request.dimensions is not None and not self.config.supports_dimensions:
            raise InvalidRequest(
                f"The model '{request.model}' does not support 'dimensions'.",
                param="dimensions",
                code="unsupported_parameter",
            )
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "input": [x if isinstance(x, str) else list(x) for x in request.inputs],
            "encoding_format": "float",
        }
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        if request.user:
            body["user"] = request.user
        cfg = self.config
        self._active += 1
        try:
            response = await _post(
                self._session, self._urls["/embeddings"], orjson.dumps(body), cfg,
                cfg.total_timeout,
            )  # fmt: skip
            try:
                data = await _read_body(response, cfg.max_response_bytes)
            finally:
                response.release()
        finally:
            self._active -= 1
        vectors, prompt = _embedding_result(data, len(request.inputs))
        if prompt is None:  # the upstream sent no usage: counted here, as admission counts
            prompt = await self._input_tokens(request)
        return EmbeddingResult(vectors, prompt)

    async def _input_tokens(self, request: EmbeddingRequest) -> int:
        """The inputs' Qwen tokens, each with the <|endoftext|> it ends with."""
        texts = [x for x in request.inputs if isinstance(x, str)]
        ids = sum(len(x) + 1 for x in request.inputs if not isinstance(x, str))
        if not texts:
            return ids
        tokenizer = await self._qwen_tokenizer()
        counted = await asyncio.to_thread(
            lambda: sum(len(tokenizer.encode_text(t)) + 1 for t in texts)
        )
        return ids + counted

    def _body(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "stream": request.stream,
            "n": request.n,
            **_sampling(request.sampling),
        }
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        top = request.sampling.logprobs
        if isinstance(request, TextRequest):
            prompt = request.prompt
            body["prompt"] = prompt if isinstance(prompt, str) else list(prompt)
            if top is not None:
                body["logprobs"] = top
            if request.sampling.prompt_logprobs is not None:
                body["echo"] = True  # the prompt's logprobs come with the echoed prompt
            return "/completions", body
        if top is not None:
            body["logprobs"] = True
            body["top_logprobs"] = top
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

    async def _default_output(self, body: dict[str, Any], request: GenerationRequest) -> None:
        """A request with no max_tokens asks the upstream for its default output limit, or
        for what the window leaves when that is less, so a default never fails a request.
        Whether the prompt leaves room is told by its length in bytes (a token is one byte or
        more) when that is enough, else by counting its tokens (off the event loop)."""
        default = request.sampling.default_max_tokens
        if "max_tokens" in body or default is None:
            return
        if isinstance(request, TextRequest):
            p = request.prompt
            bound = len(p.encode()) if isinstance(p, str) else len(p)
        else:
            texts = dumps(body["messages"]) + dumps(body.get("tools", []))
            bound = len(texts) + TEMPLATE_TOKENS
        window = self.config.context_window
        if bound + default <= window:
            body["max_tokens"] = default
            return
        tokenizer = await self._qwen_tokenizer()
        room = window - await asyncio.to_thread(self._prompt_tokens, tokenizer, request)
        if room >= 1:  # else the upstream explains that the prompt is too long
            body["max_tokens"] = min(default, room)

    async def _qwen_tokenizer(self) -> QwenTokenizer:
        """The vocabulary (~60 MB) is loaded the first time it is needed."""
        if self._tokenizer is None:
            self._tokenizer = await asyncio.to_thread(QwenTokenizer.builtin)
        return self._tokenizer

    def _prompt_tokens(self, tokenizer: QwenTokenizer, request: GenerationRequest) -> int:
        template = self._template
        assert template is not None
        return count_prompt_tokens(tokenizer, template, request)

    def _passthrough(self, request: GenerationRequest) -> bool:
        """Whether the upstream's chunks can go to the client as they are (no tools, no JSON)."""
        return (
            isinstance(request, ChatRequest)
            and request.stream
            and not request.tools
            and request.constraint is None
        )

    async def _relay(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        if (
            isinstance(request, TextRequest)
            and request.sampling.max_tokens == 0
            and request.sampling.prompt_logprobs is None
        ):  # echo of the prompt alone: the gateway's, no upstream asked (it would refuse 0)
            tokenizer = await self._qwen_tokenizer()
            prompt = await asyncio.to_thread(self._prompt_tokens, tokenizer, request)
            for index in range(request.n):
                yield ChoiceFinished(index, "length")
            request.meter.prompt_tokens = prompt
            yield Usage(prompt, 0)
            return
        session = self._session
        path, body = self._body(request)
        await self._default_output(body, request)
        cfg = self.config
        choices: dict[int, _Choice] = {}
        usage: Usage | None = None
        echo = await self._echo(request)
        self._active += 1
        finished = False
        try:
            # Before the first byte a non-streaming call waits for the whole answer.
            wait = cfg.first_token_timeout if request.stream else cfg.total_timeout
            response = await _post(session, self._urls[path], dumps(body), cfg, wait)
            try:
                if request.stream:
                    raw = self._passthrough(request)
                    async for event in self._read_stream(response, choices, raw, echo):
                        if isinstance(event, Usage):
                            usage = event  # sent last, after tool calls still pending
                            continue
                        if isinstance(event, RelayedChunk) and event.usage is not None:
                            usage = event.usage
                        yield event
                else:
                    for event in await self._read_whole(response, choices, echo):
                        if isinstance(event, Usage):
                            usage = event
                        else:
                            yield event
            except BaseException:
                response.close()  # cut off or failed: drop the connection, stop the upstream
                raise
            response.release()  # read to the end: the connection goes back to the pool
            for index, state in choices.items():
                for event in _flush_calls(index, state):
                    yield event
            usage = usage or await self._count_usage(request, choices)
            request.meter.prompt_tokens = usage.prompt_tokens
            request.meter.completion_tokens = usage.completion_tokens
            finished = True
            yield usage
        finally:
            self._active -= 1
            if not finished:
                self._observer.aborted()
                if usage is None:  # cut off: account for what was generated so far
                    counted = await self._count_usage(request, choices)
                    request.meter.prompt_tokens = counted.prompt_tokens
                    request.meter.completion_tokens = counted.completion_tokens

    async def _echo(self, request: GenerationRequest) -> _Echo | None:
        """What the upstream will echo before the output, when the prompt's logprobs are asked
        (the gateway echoes the prompt text itself otherwise)."""
        if not isinstance(request, TextRequest) or request.sampling.prompt_logprobs is None:
            return None
        prompt = request.prompt
        if isinstance(prompt, str):
            return _Echo(len(prompt))
        tokenizer = await self._qwen_tokenizer()
        return _Echo(len(tokenizer.decode(prompt)))

    async def _read_stream(
        self,
        response: aiohttp.ClientResponse,
        choices: dict[int, _Choice],
        raw: bool,
        echo: _Echo | None = None,
    ) -> AsyncGenerator[EngineEvent | RelayedChunk, None]:
        cfg = self.config
        watchdog = _Watchdog(cfg.first_token_timeout, cfg.idle_timeout, cfg.total_timeout)
        received = 0
        done = False
        content = response.content
        try:
            while True:
                watchdog.arm()
                try:
                    line = await content.readline()
                except asyncio.CancelledError:
                    watchdog.raise_if_expired()
                    raise
                except ValueError:  # one line longer than the read limit
                    raise UpstreamError("The upstream sent an oversized stream chunk.") from None
                except (aiohttp.ClientError, OSError) as exc:
                    raise UpstreamError(
                        f"The upstream stream failed: {type(exc).__name__}."
                    ) from None
                finally:
                    watchdog.disarm()
                if not line:
                    break
                received += len(line)
                if received > cfg.max_response_bytes:
                    raise UpstreamError("The upstream's response exceeds the size limit.")
                if done or not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True  # read on to the end, so the connection can be reused
                    continue
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamError("The upstream sent an invalid stream chunk.") from None
                if not isinstance(chunk, dict):
                    raise UpstreamError("The upstream sent an invalid stream chunk.")
                if "error" in chunk:
                    raise _error_from_body(502, chunk)
                watchdog.first = False
                events = _events(chunk, choices, echo)
                usage = _usage(chunk.get("usage"))
                if raw:
                    yield RelayedChunk(
                        self._client_bytes(data, chunk),
                        tuple(e for e in events if not isinstance(e, PromptLogprobs)),
                        usage,
                        str(chunk.get("id") or ""),
                    )  # fmt: skip
                    continue
                for event in events:
                    yield event
                if usage is not None:
                    yield usage
        finally:
            watchdog.stop()
        if not done:
            raise UpstreamError("The upstream closed the stream early.")

    def _client_bytes(self, data: bytes, chunk: dict[str, Any]) -> bytes:
        """The chunk's JSON for the client: the upstream's, with our model name."""
        upstream, ours = self._model_bytes
        if upstream == ours:
            return data
        if data.count(upstream) == 1:
            return data.replace(upstream, ours)
        chunk["model"] = self.served_name
        return orjson.dumps(chunk)

    async def _read_whole(
        self,
        response: aiohttp.ClientResponse,
        choices: dict[int, _Choice],
        echo: _Echo | None = None,
    ) -> list[EngineEvent]:
        data = await _read_body(response, self.config.max_response_bytes)
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("The upstream sent an invalid response body.") from None
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            raise UpstreamError("The upstream sent an invalid response body.")
        for item in body["choices"]:  # a whole message reads like one big delta
            if isinstance(item, dict) and isinstance(item.get("message"), dict):
                message = item["delta"] = item.pop("message")
                for n, call in enumerate(message.get("tool_calls") or ()):
                    if isinstance(call, dict):
                        call.setdefault("index", n)  # messages list calls without an index
        events: list[EngineEvent] = list(_events(body, choices, echo))
        usage = _usage(body.get("usage"))
        if usage is not None:
            events.append(usage)
        return events

    async def _count_usage(
        self, request: GenerationRequest, choices: Mapping[int, _Choice]
    ) -> Usage:
        """Usage counted with the Qwen tokenizer, for upstreams that report none and for
        streams cut off."""
        tokenizer = await self._qwen_tokenizer()
        prompt = self._prompt_tokens(tokenizer, request)
        completion = sum(
            len(tokenizer.encode_raw("".join(c.parts)))
            + sum(
                len(tokenizer.encode_text(call.name + call.arguments)) for call in c.calls.values()
            )
            + sum(len(tokenizer.encode_text(text)) for text in c.sent_calls)
            for c in choices.values()
        )
        return Usage(prompt, completion)


class _Watchdog:
    """Time limits for reading a stream with one timer per request, not one per chunk.

    ``arm``/``disarm`` bracket each wait on the upstream and only note the time; the timer
    re-arms itself lazily and cancels the waiting task once a limit has really passed.
    """

    __slots__ = (
        "_deadline",
        "_first",
        "_handle",
        "_idle",
        "_loop",
        "_since",
        "_task",
        "expired",
        "first",
    )  # fmt: skip

    def __init__(self, first_token: float, idle: float, total: float) -> None:
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self._first = first_token
        self._idle = idle
        self._deadline = now + total
        self._task: asyncio.Task[Any] | None = None
        self._since = now
        self.expired = False
        self.first = True
        self._handle = self._loop.call_at(min(now + first_token, self._deadline), self._check)

    def arm(self) -> None:
        self._task = asyncio.current_task()
        self._since = self._loop.time()

    def disarm(self) -> None:
        self._task = None

    def _due(self) -> float:
        return min(self._since + (self._first if self.first else self._idle), self._deadline)

    def _check(self) -> None:
        due = self._due()
        if self._task is None:  # not waiting on the upstream right now
            due = max(due, self._loop.time() + min(self._idle, self._first))
        elif self._loop.time() >= due:
            self.expired = True
            self._task.cancel()
            return
        self._handle = self._loop.call_at(due, self._check)

    def raise_if_expired(self) -> None:
        task = asyncio.current_task()
        if self.expired and task is not None and task.uncancel() == 0:
            what = "first token" if self.first else "next token"
            raise GatewayTimeout(f"The upstream timed out waiting for the {what}.") from None

    def stop(self) -> None:
        self._handle.cancel()


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, cfg: UpstreamConfig, wait: float
) -> aiohttp.ClientResponse:
    """POST ``body``; retry with backoff before the first byte on connect errors, 429/502/503."""
    attempt = 0
    while True:
        retry_after: float | None = None
        try:
            async with asyncio.timeout(wait):
                response = await session.post(url, data=body)
        except TimeoutError:
            raise GatewayTimeout("The upstream did not answer in time.") from None
        except aiohttp.ConnectionTimeoutError:
            error: GatewayError = GatewayTimeout(
                "The upstream did not accept the connection in time."
            )
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
            # cannot connect, or a pooled connection the upstream had already closed
            error = UpstreamError(f"Could not reach the upstream: {type(exc).__name__}.")
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"The upstream request failed: {type(exc).__name__}.") from None
        else:
            if response.status < 400:
                return response
            try:
                raw = await _read_capped(response)
            finally:
                response.release()
            error = _error_from_body(response.status, raw, response.headers)
            if response.status not in RETRYABLE_STATUS:
                raise error
            retry_after = _retry_after(response.headers)
        if attempt >= cfg.max_retries or (retry_after or 0) > MAX_RETRY_AFTER:
            raise error
        attempt += 1
        await asyncio.sleep(
            retry_after if retry_after is not None else cfg.backoff * 2 ** (attempt - 1)
        )


#: an upper bound of the tokens the chat template adds: the default system prompt, the tools
#: instructions and the role markers of a few messages beyond their JSON's length
TEMPLATE_TOKENS = 512


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


def _events(
    chunk: Mapping[str, Any], choices: dict[int, _Choice], echo: _Echo | None = None
) -> list[_Plain]:
    out: list[_Plain] = []
    for item in chunk.get("choices") or ():
        if not isinstance(item, dict):
            continue
        index = int(item.get("index", 0))
        state = choices.setdefault(index, _Choice())
        delta = item.get("delta")
        text = item.get("text")  # legacy completions chunks
        logprobs = _logprobs(item.get("logprobs"))
        if echo is not None and isinstance(text, str) and state.echoed < echo.chars:
            text, logprobs = _split_echo(text, logprobs, item.get("logprobs"), state, echo, out)
        if isinstance(delta, dict):
            text = delta.get("content")
            for call in delta.get("tool_calls") or ():
                slot = state.calls.setdefault(int(call.get("index", 0)), _Call())
                fn = call.get("function") or {}
                slot.id = call.get("id") or slot.id
                slot.name += fn.get("name") or ""
                slot.arguments += fn.get("arguments") or ""
        if (isinstance(text, str) and text) or logprobs:
            text = text if isinstance(text, str) else ""
            state.parts.append(text)
            out.append(TextDelta(index, text, logprobs))
        reason = item.get("finish_reason")
        if reason:
            out.extend(_flush_calls(index, state))
            out.append(ChoiceFinished(index, _FINISH.get(str(reason), "stop")))
    return out


def _split_echo(
    text: str,
    logprobs: tuple[TokenLogprob, ...],
    raw: Any,
    state: _Choice,
    echo: _Echo,
    out: list[_Plain],
) -> tuple[str, tuple[TokenLogprob, ...]]:
    """Take the echoed prompt off the front of a completions choice's text: its tokens (those
    starting before the prompt's end, by ``text_offset``, or by the tokens' own text when the
    upstream gives no offsets) go out once as :class:`PromptLogprobs`; the rest is output.
    The prompt is expected in the choice's first chunk, as vLLM and this gateway send it."""
    start = state.echoed
    left = echo.chars - start
    state.echoed += min(left, len(text))
    offsets = raw.get("text_offset") if isinstance(raw, dict) else None
    if not isinstance(offsets, list) or len(offsets) != len(logprobs):
        offsets, at = [], start
        for entry in logprobs:
            offsets.append(at)
            at += len(bytes(entry.bytes).decode("utf-8", errors="ignore"))
    cut = sum(1 for o in offsets if isinstance(o, int) and o < echo.chars)
    if not echo.sent:
        echo.sent = True
        out.append(PromptLogprobs(logprobs[:cut]))
    return text[left:], logprobs[cut:]


def _token(token: Any, raw_bytes: Any) -> tuple[str, tuple[int, ...]]:
    text = token if isinstance(token, str) else ""
    if isinstance(raw_bytes, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw_bytes):
        return text, tuple(raw_bytes)
    if text.startswith("bytes:"):
        try:
            return text, tuple(
                text[6:].encode("latin-1").decode("unicode_escape").encode("latin-1")
            )
        except (UnicodeError, ValueError):
            return text, ()
    return text, tuple(text.encode())


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _logprobs(raw: Any) -> tuple[TokenLogprob, ...]:
    """An upstream choice's logprobs (chat's ``content`` list or completions' parallel
    lists) as :class:`TokenLogprob` entries; anything malformed is left out."""
    if not isinstance(raw, dict):
        return ()
    content = raw.get("content")
    if isinstance(content, list):
        out: list[TokenLogprob] = []
        for e in content:
            if not isinstance(e, dict):
                continue
            top = tuple(
                TokenLogprob(*_swap(_token(t.get("token"), t.get("bytes")), t.get("logprob")))
                for t in e.get("top_logprobs") or ()
                if isinstance(t, dict)
            )
            text, data = _token(e.get("token"), e.get("bytes"))
            out.append(TokenLogprob(text, _number(e.get("logprob")), data, top))
        return tuple(out)
    tokens = raw.get("tokens")
    if not isinstance(tokens, list):
        return ()
    values = raw.get("token_logprobs") or []
    tops = raw.get("top_logprobs") or []
    entries: list[TokenLogprob] = []
    for i, token in enumerate(tokens):
        value = values[i] if i < len(values) else None
        alternatives = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        top = tuple(TokenLogprob(*_swap(_token(k, None), v)) for k, v in alternatives.items())
        text, data = _token(token, None)
        entries.append(TokenLogprob(text, _number(value), data, top))
    return tuple(entries)


def _swap(
    labelled: tuple[str, tuple[int, ...]], logprob: Any
) -> tuple[str, float | None, tuple[int, ...]]:
    return labelled[0], _number(logprob), labelled[1]


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    try:
        return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0))
    except (TypeError, ValueError):
        return None


def _flush_calls(index: int, state: _Choice) -> list[_Plain]:
    out: list[_Plain] = []
    for n, call in sorted(state.calls.items()):
        arguments = call.arguments or "{}"
        out.append(ToolCallDelta(index, n, call.id or new_call_id(), call.name, arguments))
        state.sent_calls.append(call.name + call.arguments)
    state.calls.clear()
    return out


async def _read_body(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """The whole body, however the upstream split its writes; more than ``cap`` bytes is an
    :class:`UpstreamError` (the rest is not read)."""
    parts: list[bytes] = []
    size = 0
    try:
        async for part in response.content.iter_chunked(64 * 1024):
            size += len(part)
            if size > cap:
                raise UpstreamError("The upstream's response exceeds the size limit.")
            parts.append(part)
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(f"The upstream response failed: {type(exc).__name__}.") from None
    return b"".join(parts)


async def _read_capped(response: aiohttp.ClientResponse, cap: int = 64 * 1024) -> Any:
    try:
        return orjson.loads(await response.content.read(cap))
    except (orjson.JSONDecodeError, aiohttp.ClientError, OSError):
        return {}


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _error_from_body(
    status: int, raw: Any, headers: Mapping[str, str] | None = None
) -> GatewayError:
    """Map an upstream error to ours by status and error type/code, never by message text.

    A 4xx message is about the client's request and is relayed (less any URL credentials); a
    5xx message may describe the upstream's internals and is not. The upstream refusing the
    gateway's own credentials (401, 403) is the gateway's fault: a 502,
    never an ``invalid_api_key`` that the client would take for its own key."""
    err = raw.get("error") if isinstance(raw, dict) else None
    if not isinstance(err, dict):
        err = raw if isinstance(raw, dict) else {}
    message = err.get("message") if isinstance(err.get("message"), str) else None
    generic = f"The upstream answered {status}."
    message = strip_userinfo(message)[:2000] if message and status < 500 else generic
    param = err.get("param") if isinstance(err.get("param"), str) else None
    code = err.get("code") if isinstance(err.get("code"), str) else None
    extra = {}
    if headers is not None and headers.get("retry-after"):
        extra["Retry-After"] = headers["retry-after"]
    if status == 400:
        if code == "context_length_exceeded":
            return ContextLengthExceeded(message, param=param)
        return InvalidRequest(message, param=param, code=code)
    if status in (401, 403):
        return UpstreamError(
            f"The upstream refused the gateway's credentials ({status}).",
            code="upstream_auth_failed",
        )
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


def _embedding_result(data: bytes, count: int) -> tuple[tuple[bytes, ...], int | None]:
    """An upstream's embeddings response: ``count`` float vectors, by ``index``, and its
    prompt tokens (None when it reports no usage)."""
    try:
        body = orjson.loads(data)
        items = body["data"]
        vectors: list[bytes | None] = [None] * count
        for n, item in enumerate(items):
            index = item.get("index", n)
            values = item["embedding"]
            if not isinstance(values, list) or not isinstance(index, int):
                raise TypeError
            vectors[index] = array("f", [float(v) for v in values]).tobytes()
        usage = body.get("usage") or {}
        reported = usage.get("prompt_tokens")
        prompt = None if reported is None else int(reported)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, AttributeError):
        raise UpstreamError("The upstream sent an invalid embeddings response.") from None
    if any(v is None for v in vectors) or len(items) != count:
        raise UpstreamError("The upstream did not send a vector for every input.")
    if sys.byteorder != "little":  # pragma: no cover - the wire format is little-endian
        vectors = [_swapped(v) for v in vectors]
    return tuple(v or b"" for v in vectors), prompt


def _swapped(vector: bytes | None) -> bytes:
    values = array("f", vector or b"")
    values.byteswap()
    return values.tobytes()


async def create_engine(config: UpstreamConfig, ctx: EngineContext) -> OpenAIUpstreamEngine:
    return await OpenAIUpstreamEngine.open(
        config, ctx.served_name, health_interval=ctx.health_interval, observer=ctx.observer
    )


PLUGIN = EnginePlugin("openai", UpstreamConfig, create_engine, section="upstream",
                      url_field="base_url")  # fmt: skip
