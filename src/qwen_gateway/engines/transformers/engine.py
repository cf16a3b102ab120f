"""The in-process engine: a scheduler thread running continuous batching over SlotModel.

Requests join the running batch as soon as a slot is free (their prompt is prefilled
between two decode steps) and leave it the step they finish or are aborted, so no request
waits for another to finish. The asyncio side talks to the thread through one inbox
(submissions and aborts) and receives each step's events in one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen_gateway.core.stop import StopMatcher
from qwen_gateway.core.types import (
    ChoiceFinished,
    EngineEvent,
    FinishReason,
    ModelInfo,
    OutputConstraint,
    SamplingParams,
    TextDelta,
    Usage,
    UsageMeter,
)
from qwen_gateway.engines.base import EngineStats
from qwen_gateway.engines.prompt import PromptEngine
from qwen_gateway.errors import EngineOverloaded, EngineUnavailable, GatewayError, InternalError
from qwen_gateway.qwen.template import ChatTemplate
from qwen_gateway.qwen.tokenizer import ENDOFTEXT_ID, IM_END_ID, IncrementalDecoder, QwenTokenizer

#: transformers' lazy imports are not safe to run from several threads at once (two engines
#: loading side by side failed to import AutoModelForCausalLM), so loads take turns.
_LOAD_LOCK = threading.Lock()

log = logging.getLogger(__name__)

DEFAULT_CONTEXT_WINDOW = 131072


@dataclass(frozen=True, slots=True)
class LocalEngineConfig:
    model: str
    served_name: str
    device: str = "auto"
    dtype: str = "auto"
    max_batch_size: int = 32
    max_waiting: int = 256
    context_window: int | None = None
    max_output_tokens: int = 8192


class _Sink:
    """Where a request's events go: an asyncio queue fed from the scheduler thread.

    A :class:`GatewayError` in the queue means the engine failed this request.
    """

    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: asyncio.Queue[EngineEvent | GatewayError] = asyncio.Queue()


@dataclass(eq=False)
class _Choice:
    group: _Group
    index: int
    sampler: Any
    decoder: IncrementalDecoder
    stop: StopMatcher
    constraint: Any = None  # a constraint.Constraint when the output is grammar-bound
    slot: int = -1
    position: int = 0  # cache length, i.e. where the next token goes
    last_token: int = 0
    generated: int = 0
    done: bool = False


@dataclass(eq=False)
class _Group:
    request_id: str
    prompt: list[int]
    sampling: SamplingParams
    n: int
    sink: _Sink
    grammar: Any = None  # a compiled grammar for OutputConstraint, or None
    constraint_kind: str | None = None
    choices: list[_Choice] = field(default_factory=list)
    completion_tokens: int = 0
    open_choices: int = 0
    abort_requested_at: int | None = None
    meter: UsageMeter | None = None  # updated as tokens come, read if the stream is cut


class TransformersBackend:
    """A :class:`~qwen_gateway.engines.base.TokenBackend` over a Hugging Face Qwen2 model."""

    def __init__(self, config: LocalEngineConfig) -> None:
        self.config = config
        self._created = int(time.time())
        self._info = ModelInfo(
            id=config.served_name,
            created=self._created,
            context_window=config.context_window or DEFAULT_CONTEXT_WINDOW,
            max_output_tokens=config.max_output_tokens,
            enforces_constraints=True,
        )
        self.tokenizer: QwenTokenizer | None = None
        self.template: ChatTemplate | None = None
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._ids = itertools.count()
        # Scheduler-thread state.
        self._waiting: deque[_Group] = deque()
        self._running: list[_Choice] = []
        self._groups: dict[str, _Group] = {}
        self._free_slots: list[int] = []
        self._outbox: list[tuple[_Sink, EngineEvent | GatewayError]] = []
        self._eos: frozenset[int] = frozenset({IM_END_ID, ENDOFTEXT_ID})
        self._model: Any = None
        self._grammars: Any = None  # constraint.GrammarCompiler, created with the model
        self._compile_lock = asyncio.Lock()
        # Counters read by stats().
        self._steps = 0
        self._last_batch = 0
        self._max_batch = 0
        self._aborted = 0
        self._max_abort_delay = 0
        self._submitted = 0  # written by the event loop only
        self._dequeued = 0  # written by the scheduler thread only

    # ---- lifecycle --------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._main, name="qwen-engine", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._ready.wait)
        if self._failed is not None:
            raise EngineUnavailable(f"The model failed to load: {self._failed}") from self._failed

    async def ready(self) -> bool:
        return self._ready.is_set() and self._failed is None

    async def aclose(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._inbox.put(("stop", None))
            await asyncio.to_thread(self._thread.join)

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self._running),
            waiting=self._submitted - self._dequeued,
            decode_steps=self._steps,
            last_batch_size=self._last_batch,
            max_batch_size=self._max_batch,
            aborted=self._aborted,
            max_abort_delay_steps=self._max_abort_delay,
        )

    # ---- request side (event loop) ---------------------------------------

    async def generate(
        self,
        prompt: Sequence[int],
        sampling: SamplingParams,
        n: int,
        request_id: str,
        constraint: OutputConstraint | None = None,
        meter: UsageMeter | None = None,
    ) -> AsyncGenerator[EngineEvent, None]:
        if not self._ready.is_set() or self._failed is not None:
            raise EngineUnavailable("The model is still loading.", headers={"Retry-After": "5"})
        if self._submitted - self._dequeued >= self.config.max_waiting:
            raise EngineOverloaded(
                "The engine's queue is full; retry shortly.", headers={"Retry-After": "1"}
            )
        if n > self.config.max_batch_size:
            raise EngineOverloaded(f"n={n} exceeds the engine's batch size.")
        grammar = None
        if constraint is not None:
            async with self._compile_lock:  # compiled grammars are cached: mostly instant
                grammar = await asyncio.to_thread(self._compile, constraint)
        rid = f"{request_id or 'req'}-{next(self._ids)}"
        kind = constraint.kind if constraint is not None else None
        group = _Group(rid, list(prompt), sampling, n, _Sink(), grammar, kind, meter=meter)
        self._submitted += 1
        self._inbox.put(("submit", group))
        finished = False
        try:
            while True:
                event = await group.sink.queue.get()
                if isinstance(event, GatewayError):
                    finished = True
                    raise event
                yield event
                if isinstance(event, Usage):
                    finished = True
                    return
        finally:
            if not finished:
                self._inbox.put(("abort", (rid, self._steps)))

    # ---- scheduler thread -------------------------------------------------

    def _main(self) -> None:
        try:
            self._load()
        except BaseException as exc:  # reported to start()
            log.exception("model load failed")
            self._failed = exc
            self._ready.set()
            return
        self._ready.set()
        import torch

        with torch.inference_mode():
            try:
                self._schedule()
            except BaseException:
                log.exception("engine scheduler crashed")
                self._failed = RuntimeError("engine scheduler crashed")
                self._fail_all(EngineUnavailable("The engine stopped."))

    def _load(self) -> None:
        with _LOAD_LOCK:  # engines of several deployments or replicas load one at a time
            self._load_model()

    def _load_model(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from qwen_gateway.engines.transformers.model import CacheShape, SlotModel

        cfg = self.config
        directory = _resolve_model_dir(cfg.model)
        device = cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype_name = cfg.dtype
        if dtype_name == "auto":
            dtype_name = "bfloat16" if device.startswith("cuda") else "float32"
        dtype = getattr(torch, dtype_name)
        self.tokenizer = QwenTokenizer.from_dir(directory)
        self.template = ChatTemplate.from_dir(directory)
        hf: Any = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype)
        hf = hf.to(device).eval()
        window = cfg.context_window or _model_context_window(hf.config)
        self._info = ModelInfo(
            id=cfg.served_name,
            created=self._created,
            context_window=window,
            max_output_tokens=min(cfg.max_output_tokens, window),
            enforces_constraints=True,
        )
        self._model = SlotModel(hf, CacheShape(slots=cfg.max_batch_size, max_len=window))
        from qwen_gateway.engines.transformers.grammar import GrammarCompiler

        self._grammars = GrammarCompiler(self.tokenizer, int(hf.config.vocab_size))
        self._free_slots = list(range(cfg.max_batch_size))
        eos = getattr(hf.generation_config, "eos_token_id", None)
        ids = eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else []
        self._eos = frozenset({IM_END_ID, ENDOFTEXT_ID, *ids})

    def _compile(self, constraint: OutputConstraint) -> Any:
        if constraint.kind == "tool_calls":
            return self._grammars.tool_calls(constraint.tools, parallel=constraint.parallel)
        return self._grammars.json_schema(constraint.schema)

    def _schedule(self) -> None:
        while True:
            idle = not self._running and not self._waiting
            if not self._drain_inbox(block=idle):
                return
            self._admit()
            if self._running:
                self._decode_step()
            self._flush()

    def _drain_inbox(self, *, block: bool) -> bool:
        try:
            item = self._inbox.get() if block else self._inbox.get_nowait()
        except queue.Empty:
            return True
        while True:
            kind, payload = item
            if kind == "stop":
                self._fail_all(EngineUnavailable("The server is shutting down."))
                return False
            if kind == "submit":
                self._waiting.append(payload)
                self._groups[payload.request_id] = payload
            elif kind == "abort":
                self._abort(*payload)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return True

    def _abort(self, request_id: str, requested_at_step: int) -> None:
        group = self._groups.pop(request_id, None)
        if group is None:
            return
        if group in self._waiting:
            self._waiting.remove(group)
            self._dequeued += 1
        for choice in group.choices:
            if not choice.done:
                choice.done = True
                self._release(choice)
        self._aborted += 1
        self._max_abort_delay = max(self._max_abort_delay, self._steps - requested_at_step)

    def _admit(self) -> None:
        from qwen_gateway.engines.transformers.constraint import Constraint
        from qwen_gateway.engines.transformers.sampler import SequenceSampler

        model = self._model
        assert self.tokenizer is not None
        while self._waiting and len(self._free_slots) >= self._waiting[0].n:
            group = self._waiting.popleft()
            self._dequeued += 1
            slots = [self._free_slots.pop(0) for _ in range(group.n)]
            try:
                logits = model.prefill(slots[0], group.prompt)
                for slot in slots[1:]:
                    model.copy_slot(slots[0], slot, len(group.prompt))
            except Exception:
                log.exception("prefill failed")
                self._free_slots = sorted(self._free_slots + slots)
                self._fail_group(group)
                continue
            group.open_choices = group.n
            for i, slot in enumerate(slots):
                sampler = SequenceSampler(group.sampling, group.prompt, model.device, i)
                choice = _Choice(
                    group=group,
                    index=i,
                    sampler=sampler,
                    decoder=self.tokenizer.decoder(),
                    stop=StopMatcher(group.sampling.stop),
                    slot=slot,
                    position=len(group.prompt),
                )
                if group.grammar is not None:
                    choice.constraint = Constraint(group.grammar, group.sampling.max_tokens or 1)
                group.choices.append(choice)
            self._sample_and_advance(group.choices, logits.unsqueeze(0).expand(group.n, -1).clone())
            self._running.extend(c for c in group.choices if not c.done)

    def _decode_step(self) -> None:
        batch = sorted(self._running, key=lambda c: c.slot)
        try:
            logits = self._model.decode(
                [c.slot for c in batch], [c.last_token for c in batch], [c.position for c in batch]
            )
        except Exception:
            log.exception("decode step failed")
            for group in {c.group for c in batch}:
                self._fail_group(group)
            return
        self._steps += 1
        self._last_batch = len(batch)
        self._max_batch = max(self._max_batch, len(batch))
        for c in batch:
            c.position += 1
        self._sample_and_advance(batch, logits)

    def _sample_and_advance(self, choices: list[_Choice], logits: Any) -> None:
        from qwen_gateway.engines.transformers.sampler import sample

        for i, choice in enumerate(choices):
            if choice.constraint is not None and not choice.done:
                budget = (choice.group.sampling.max_tokens or 1) - choice.generated
                choice.constraint.apply(logits[i], budget)
        tokens = sample(logits, [c.sampler for c in choices])
        vocab = logits.shape[-1]
        for choice, token in zip(choices, tokens, strict=True):
            if choice.done:
                continue
            if choice.constraint is not None and token not in self._eos:
                choice.constraint.accept(token)
            choice.sampler.observe(token, vocab, self._model.device)
            self._advance(choice, token)

    def _advance(self, choice: _Choice, token: int) -> None:
        group = choice.group
        sink = group.sink
        choice.generated += 1
        group.completion_tokens += 1
        if group.meter is not None:
            group.meter.completion_tokens = group.completion_tokens
        if token in self._eos:
            forced = choice.constraint is not None and choice.constraint.forced_close
            self._finish(choice, "length" if forced and group.constraint_kind == "json" else "stop")
            return
        choice.last_token = token
        text, stopped = choice.stop.feed(choice.decoder.push(token))
        if text:
            self._outbox.append((sink, TextDelta(choice.index, text)))
        if stopped:
            self._finish(choice, "stop", flush=False)
        elif choice.generated >= (group.sampling.max_tokens or 1):
            self._finish(choice, "length")

    def _finish(self, choice: _Choice, reason: FinishReason, *, flush: bool = True) -> None:
        group = choice.group
        if flush:
            text, _ = choice.stop.feed(choice.decoder.flush())
            text += choice.stop.flush()
            if text:
                self._outbox.append((group.sink, TextDelta(choice.index, text)))
        choice.done = True
        self._release(choice)
        self._outbox.append((group.sink, ChoiceFinished(choice.index, reason)))
        group.open_choices -= 1
        if group.open_choices == 0:
            self._groups.pop(group.request_id, None)
            usage = Usage(len(group.prompt), group.completion_tokens)
            self._outbox.append((group.sink, usage))

    def _release(self, choice: _Choice) -> None:
        if choice in self._running:
            self._running.remove(choice)
        if choice.slot >= 0:
            self._free_slots.append(choice.slot)
            self._free_slots.sort()
            choice.slot = -1

    def _fail_group(self, group: _Group, error: GatewayError | None = None) -> None:
        """End ``group`` with an error its client sees (a 5xx or an in-stream error frame)."""
        for choice in group.choices:
            if not choice.done:
                choice.done = True
                self._release(choice)
        self._groups.pop(group.request_id, None)
        self._outbox.append(
            (group.sink, error or InternalError("The engine failed while generating."))
        )

    def _fail_all(self, error: GatewayError | None = None) -> None:
        self._dequeued += len(self._waiting)
        self._waiting.clear()
        for group in list(self._groups.values()):
            self._fail_group(group, error)
        self._flush()

    def _flush(self) -> None:
        if not self._outbox or self._loop is None:
            return
        batch, self._outbox = self._outbox, []
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            self._loop.call_soon_threadsafe(_deliver, batch)


def _deliver(batch: list[tuple[_Sink, EngineEvent | GatewayError]]) -> None:
    for sink, event in batch:
        sink.queue.put_nowait(event)


def _resolve_model_dir(model: str) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model))


def _model_context_window(config: Any) -> int:
    window = int(getattr(config, "max_position_embeddings", 0) or DEFAULT_CONTEXT_WINDOW)
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict) and scaling.get("factor"):
        original = scaling.get("original_max_position_embeddings") or window
        window = int(original * float(scaling["factor"]))
    return window


def create_engine(options: Mapping[str, Any]) -> PromptEngine:
    """Entry point ``qwen_gateway.engines: transformers``; options as in LocalEngineConfig."""
    return PromptEngine(TransformersBackend(LocalEngineConfig(**options)))
