"""The Responses API edge (``/v1/responses``): normalise (``core/responses.py``), generate
through the pipeline (``service/pipeline.py``), render the events as a Response object or as
the Responses stream events; store responses when the operator turned storage on.

Stored responses (``responses.store`` in the configuration, off by default: no prompt or
answer text is kept unless the operator says so) belong to the caller that made them: every
read, delete and ``previous_response_id`` is scoped to the principal, and another caller's
response is simply not found. Expired responses are invisible at once and purged.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from qwen_gateway.core.normalize import RequestLimits
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.responses import (
    ResponseParams,
    StoredResponse,
    item_id,
    parse_response_params,
    response_request,
)
from qwen_gateway.core.types import (
    ChoiceFinished,
    EngineEvent,
    RelayedChunk,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from qwen_gateway.errors import GatewayError, InvalidRequest, NotFound
from qwen_gateway.policy.principal import Principal
from qwen_gateway.protocol.responses import (
    FunctionToolCall,
    ItemResource,
    OutputItem,
    OutputMessage,
    Response,
    ResponseDeleted,
    ResponseItemList,
    ResponseStreamEvent,
    ResponseUsage,
)
from qwen_gateway.service.completions import accounted
from qwen_gateway.service.normalise import Normalise
from qwen_gateway.service.pipeline import Generate

STORE_SETTING = "responses.store"
MAX_LIST = 100


class ResponseStore(Protocol):
    """Where stored responses live (``store/responses.py``)."""

    async def add(self, stored: StoredResponse) -> None: ...

    async def get(self, principal: str, response_id: str, now: datetime) -> StoredResponse | None:
        """The caller's response, unless it has expired."""
        ...

    async def delete(self, principal: str, response_id: str, now: datetime) -> bool:
        """Delete the caller's response unless it has expired; whether one was deleted."""
        ...

    async def purge(self, before: datetime) -> int:
        """Delete the responses that expired before ``before``; how many."""
        ...


@dataclass(slots=True)
class _Draft:
    """The response being made: output items as they complete."""

    text: str = ""
    calls: list[FunctionToolCall] = field(default_factory=list)
    reason: str = "stop"
    usage: Usage | None = None


def _principal_id(record: RequestRecord) -> str:
    principal = record.principal
    return principal.id if isinstance(principal, Principal) else "anonymous"


def _usage(u: Usage) -> ResponseUsage:
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.total_tokens,
    }


def _message(ident: str, text: str, status: str) -> OutputMessage:
    return {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "status": status,  # type: ignore[typeddict-item]
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _call(event: ToolCallDelta, status: str) -> FunctionToolCall:
    return {
        "id": item_id("fc"),
        "type": "function_call",
        "call_id": event.id,
        "name": event.name,
        "arguments": event.arguments,
        "status": status,  # type: ignore[typeddict-item]
    }


class ResponsesService:
    def __init__(
        self,
        normalise: Normalise,
        limits: RequestLimits,
        generate: Generate,
        store: ResponseStore | None,
        retention_days: int = 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``store``: None when storage is off (the default)."""
        self._normalise = normalise
        self._limits = limits
        self._generate = generate
        self._store = store
        self._retention = timedelta(days=retention_days)
        self._clock = clock

    @property
    def storing(self) -> bool:
        return self._store is not None

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # ---- create -----------------------------------------------------------

    async def create(
        self, raw: Mapping[str, Any], record: RequestRecord
    ) -> Response | AsyncGenerator[ResponseStreamEvent, None]:
        params = parse_response_params(raw, self._limits)
        wire = params.wire
        record.stream = bool(wire.stream)
        if wire.store and self._store is None:
            raise InvalidRequest(
                f"Stored responses are off on this server ({STORE_SETTING}: false): send "
                "store: false, or ask the operator to enable the setting.",
                param="store",
                code="storage_disabled",
            )
        conversation: list[ItemResource] = []
        if wire.previous_response_id is not None:
            conversation = await self._conversation(wire.previous_response_id, record)
        request = response_request(params, conversation, record.request_id)
        request = self._normalise.default_output(request, record)
        user = wire.user or wire.safety_identifier or None
        events = self._generate(request, record, user)
        ident = item_id("resp")
        created = int(self._clock())
        keep = self._store is not None and wire.store is not False
        shell = self._shell(ident, created, params, record, keep)
        saved = (
            (lambda response: self._save(response, params, conversation, record)) if keep else None
        )
        if wire.stream:
            return self._events(events, shell, record, request.meter, saved)
        draft = _Draft()
        recorded = accounted(events, record, request.meter)
        async with aclosing(recorded):
            async for event in recorded:
                _take(draft, event)
        shell["model"] = record.deployment or shell["model"]
        response = _finish(shell, draft, self._clock)
        if saved is not None:
            await saved(response)
        return response

    async def _conversation(self, previous: str, record: RequestRecord) -> list[ItemResource]:
        if self._store is None:
            raise InvalidRequest(
                f"previous_response_id needs stored responses, which are off on this server "
                f"({STORE_SETTING}: false): send the conversation in 'input' instead.",
                param="previous_response_id",
                code="storage_disabled",
            )
        stored = await self._store.get(_principal_id(record), previous, self._now())
        if stored is None:
            raise InvalidRequest(
                f"Previous response with id {previous[:128]!r} not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        output: list[ItemResource] = list(stored.response["output"])
        return [*stored.conversation, *stored.input_items, *output]

    async def _save(
        self,
        response: Response,
        params: ResponseParams,
        conversation: Sequence[ItemResource],
        record: RequestRecord,
    ) -> None:
        assert self._store is not None
        now = self._now()
        await self._store.add(
            StoredResponse(
                id=response["id"],
                principal=_principal_id(record),
                response=response,
                input_items=list(params.items),
                conversation=list(conversation),
                created_at=now,
                expires_at=now + self._retention,
            )
        )

    def _shell(
        self,
        ident: str,
        created: int,
        params: ResponseParams,
        record: RequestRecord,
        keep: bool,
    ) -> Response:
        """The response before any output: what ``response.created`` carries."""
        wire = params.wire
        fmt: dict[str, Any] = {"type": "text"}
        if wire.text is not None and wire.text.format is not None:
            fmt = wire.text.format.model_dump(by_alias=True, exclude_none=True)
        tools = [
            {
                "type": "function",
                "name": t["function"]["name"],
                "description": t["function"].get("description"),
                "parameters": t["function"].get("parameters"),
                "strict": t["function"].get("strict"),
            }
            for t in params.tools
        ]
        shell: Response = {
            "id": ident,
            "object": "response",
            "created_at": created,
            "status": "in_progress",
            "error": None,
            "incomplete_details": None,
            "instructions": wire.instructions,
            "max_output_tokens": wire.max_output_tokens,
            "model": record.deployment or wire.model,
            "output": [],
            "parallel_tool_calls": wire.parallel_tool_calls is not False,
            "previous_response_id": wire.previous_response_id,
            "store": keep,
            "temperature": 1.0 if wire.temperature is None else wire.temperature,
            "top_p": 1.0 if wire.top_p is None else wire.top_p,
            "text": {"format": fmt},
            "tool_choice": wire.tool_choice if wire.tool_choice is not None else "auto",
            "tools": tools,
            "truncation": "disabled",
            "metadata": dict(wire.metadata or {}),
            "background": False,
        }
        if wire.user is not None:
            shell["user"] = wire.user
        return shell

    async def _events(
        self,
        events: AsyncGenerator[EngineEvent, None],
        shell: Response,
        record: RequestRecord,
        meter: Any,
        saved: Callable[[Response], Any] | None,
    ) -> AsyncGenerator[ResponseStreamEvent, None]:
        """The stream events, from ``response.created`` to ``response.completed`` (or
        ``.incomplete``, or ``error`` and ``response.failed``). The first engine event is in
        hand before anything is sent, so a failure before it keeps its HTTP status."""
        recorded = accounted(events, record, meter)
        async with aclosing(recorded):
            ev = await anext(recorded)
            shell["model"] = record.deployment or shell["model"]
            out = _Stream()
            yield out.event("response.created", response={**shell})
            yield out.event("response.in_progress", response={**shell})
            draft = out.draft
            try:
                while True:
                    for inner in ev.events if isinstance(ev, RelayedChunk) else (ev,):
                        if isinstance(inner, TextDelta):
                            if inner.text:
                                if out.message_id is None:
                                    for e in out.open_message():
                                        yield e
                                yield out.delta(inner.text)
                        elif isinstance(inner, ToolCallDelta):
                            for e in out.call(inner):
                                yield e
                        else:
                            _take(draft, inner)
                    if draft.usage is not None:
                        break
                    try:
                        ev = await anext(recorded)
                    except StopAsyncIteration:
                        break
                if out.message_id is None and not out.output:
                    for e in out.open_message():  # an empty answer is an empty message
                        yield e
                for e in out.close_message():
                    yield e
                response = _finish(shell, draft, self._clock, out.output)
                if saved is not None:
                    await saved(response)
            except GatewayError as exc:
                failed = {**shell, "status": "failed", "output": out.output,
                          "error": {"code": _error_code(exc), "message": exc.message}}  # fmt: skip
                yield out.event("error", code=exc.code, message=exc.message, param=exc.param)
                yield out.event("response.failed", response=failed)
                return
            kind = "response.incomplete" if response["status"] == "incomplete" else (
                "response.completed"
            )  # fmt: skip
            yield out.event(kind, response=response)

    # ---- stored responses -------------------------------------------------

    def _require_store(self) -> ResponseStore:
        if self._store is None:
            raise NotFound(
                f"Stored responses are off on this server ({STORE_SETTING}: false), so there "
                "is no response to find.",
                code="storage_disabled",
            )
        return self._store

    async def _stored(self, response_id: str, record: RequestRecord) -> StoredResponse:
        store = self._require_store()
        stored = await store.get(_principal_id(record), response_id, self._now())
        if stored is None:
            raise NotFound(f"No response found with id {response_id[:128]!r}.")
        return stored

    async def retrieve(self, response_id: str, record: RequestRecord) -> Response:
        return (await self._stored(response_id, record)).response

    async def delete(self, response_id: str, record: RequestRecord) -> ResponseDeleted:
        store = self._require_store()
        if not await store.delete(_principal_id(record), response_id, self._now()):
            raise NotFound(f"No response found with id {response_id[:128]!r}.")
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def cancel(self, response_id: str, record: RequestRecord) -> Response:
        """Only background responses can be cancelled, and this server runs none."""
        await self._stored(response_id, record)
        raise InvalidRequest(
            "Only responses created with background: true can be cancelled, and this server "
            "does not run background responses.",
            param="response_id",
            code="not_cancellable",
        )

    async def input_items(
        self,
        response_id: str,
        record: RequestRecord,
        *,
        limit: int = 20,
        order: str = "desc",
        after: str | None = None,
    ) -> ResponseItemList:
        if not 1 <= limit <= MAX_LIST:
            raise InvalidRequest(
                f"limit must be between 1 and {MAX_LIST}.", param="limit", code="invalid_value"
            )
        if order not in ("asc", "desc"):
            raise InvalidRequest("order must be 'asc' or 'desc'.", param="order")
        stored = await self._stored(response_id, record)
        items = list(stored.input_items)
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [i["id"] for i in items]
            if after not in ids:
                raise InvalidRequest(f"No item {after[:64]!r} in this list.", param="after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }

    async def purge(self) -> int:
        """Delete expired responses (the maintenance task calls this)."""
        return await self._store.purge(self._now()) if self._store is not None else 0


class _Stream:
    """The state of a streamed response: the events' sequence, the output items so far and
    the message being streamed (its text deltas are the hot path: one dict each)."""

    __slots__ = ("draft", "message_id", "output", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.draft = _Draft()
        self.output: list[OutputItem] = []
        self.message_id: str | None = None

    def event(self, kind: str, **fields: Any) -> ResponseStreamEvent:
        seq = self.seq
        self.seq = seq + 1
        return {"type": kind, "sequence_number": seq, **fields}

    def delta(self, text: str) -> ResponseStreamEvent:
        self.draft.text += text
        seq = self.seq
        self.seq = seq + 1
        return {
            "type": "response.output_text.delta",
            "sequence_number": seq,
            "item_id": self.message_id,
            "output_index": len(self.output),
            "content_index": 0,
            "delta": text,
            "logprobs": [],
        }

    def open_message(self) -> list[ResponseStreamEvent]:
        message = _message(item_id("msg"), "", "in_progress")
        message["content"] = []
        self.message_id = message["id"]
        index = len(self.output)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self.event("response.output_item.added", output_index=index, item=message),
            self.event("response.content_part.added", item_id=message["id"],
                       output_index=index, content_index=0, part=part),
        ]  # fmt: skip

    def close_message(self) -> list[ResponseStreamEvent]:
        if self.message_id is None:
            return []
        text = self.draft.text
        status = "incomplete" if self.draft.reason == "length" else "completed"
        item = _message(self.message_id, text, status)
        self.message_id = None
        index = len(self.output)
        self.output.append(item)
        common = {"item_id": item["id"], "output_index": index}
        return [
            self.event("response.output_text.done", **common, content_index=0, text=text,
                       logprobs=[]),
            self.event("response.content_part.done", **common, content_index=0,
                       part=item["content"][0]),
            self.event("response.output_item.done", output_index=index, item=item),
        ]  # fmt: skip

    def call(self, call: ToolCallDelta) -> list[ResponseStreamEvent]:
        """A complete call's events (engines hand over whole calls: one arguments delta),
        after the message before it is closed."""
        frames = self.close_message()
        index = len(self.output)
        added = _call(call, "in_progress")
        added["arguments"] = ""
        done = _call(call, "completed")
        done["id"] = added["id"]
        self.output.append(done)
        self.draft.calls.append(done)
        common = {"item_id": added["id"], "output_index": index}
        return [
            *frames,
            self.event("response.output_item.added", output_index=index, item=added),
            self.event("response.function_call_arguments.delta", **common,
                       delta=call.arguments),
            self.event("response.function_call_arguments.done", **common, name=call.name,
                       arguments=call.arguments),
            self.event("response.output_item.done", output_index=index, item=done),
        ]  # fmt: skip


def _take(draft: _Draft, event: EngineEvent) -> None:
    """Note a non-streamed event in the draft."""
    if isinstance(event, RelayedChunk):
        for inner in event.events:
            _take(draft, inner)
    elif isinstance(event, TextDelta):
        draft.text += event.text
    elif isinstance(event, ToolCallDelta):
        draft.calls.append(_call(event, "completed"))
    elif isinstance(event, ChoiceFinished):
        draft.reason = event.reason
    elif isinstance(event, Usage):
        draft.usage = event


def _finish(
    shell: Response,
    draft: _Draft,
    clock: Callable[[], float],
    output: list[OutputItem] | None = None,
) -> Response:
    incomplete = draft.reason in ("length", "content_filter")
    if output is None:
        output = []
        if draft.text or not draft.calls:
            status = "incomplete" if draft.reason == "length" else "completed"
            output.append(_message(item_id("msg"), draft.text, status))
        output.extend(draft.calls)
    response: Response = {
        **shell,
        "status": "incomplete" if incomplete else "completed",
        "output": output,
    }
    if draft.usage is not None:
        response["usage"] = _usage(draft.usage)
    if incomplete:
        response["incomplete_details"] = {
            "reason": "max_output_tokens" if draft.reason == "length" else "content_filter"
        }
    else:
        response["completed_at"] = int(clock())
    return response


def _error_code(exc: GatewayError) -> str:
    """A code from the schema's list for ``response.error``."""
    return "rate_limit_exceeded" if exc.status_code == 429 else "server_error"
