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
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field

from qwen_gateway.core.stop import StopMatcher
from qwen_gateway.core.types import (
    ChoiceFinished,
    EngineEvent,
    FinishReason,
    ModelInfo,
    OutputConstraint,
    PromptLogprobs,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    Usage,
    UsageMeter,
)
from qwen_gateway.engines.base import (
    QUIET,
    Engine,
    EngineHealth,
    EngineObserver,
    GenerationJob,
)
from qwen_gateway.engines.plugin import (
    DEFAULT_CONTEXT_WINDOW,
    EngineConfig,
    EngineContext,
    EnginePlugin,
)
from qwen_gateway.engines.prompt import PromptEngine
from qwen_gateway.errors import EngineOverloaded, EngineUnavailable, GatewayError, InternalError
from qwen_gateway.qwen.template import ChatTemplate
from qwen_gateway.qwen.tokenizer import ENDOFTEXT_ID, IM_END_ID, IncrementalDecoder, QwenTokenizer

#: transformers' lazy imports are not safe to run from several threads at once (two engines
#: loading side by side failed to import AutoModelForCausalLM), so loads take turns.
_LOAD_LOCK = threading.Lock()

log = logging.getLogger(__name__)

#: Scheduler crashes in a row (nothing served in between) after which the engine stays down.
MAX_CRASHES_IN_A_ROW: Final = 3

#: The stages of a request's work on the scheduler thread; a failure in one fails only that
#: request. "loop" is the scheduler's own work (a failure there restarts the scheduler) and
#: "restart" the moment before it is restarted.
Stage = Literal["admit", "prefill", "sample", "constrain", "detokenise", "loop", "restart"]
#: Called with (stage, request id) as the scheduler enters a stage: a seam for fault injection.
Probe = Callable[[Stage, str], None]


class TransformersConfig(EngineConfig):
    """An ``engine: transformers`` deployment: the in-process engine's settings."""

    model: str | None = None  # directory or Hugging Face id; None: the default (tiny) model
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_batch_size: int = Field(default=32, ge=1, le=1024)
    max_waiting: int = Field(default=256, ge=1)
    context_window: int | None = Field(default=None, ge=16)  # None: the model's own
    max_output_tokens: int = Field(default=8192, ge=1)
    #: ``embed``: an embedding model (gte-Qwen2 recipe), served by engines.transformers.embedding
    task: Literal["generate", "embed"] = "generate"
    #: an embedding model may be asked for fewer ``dimensions`` (truncated, renormalised)
    supports_dimensions: bool = False
    #: the most tokens one embeddings request may hold, all inputs together
    max_embedding_tokens: int = Field(default=300_000, ge=1)
    #: an embedding model whose tokens attend to every other (gte-Qwen2 was trained so, and
    #: vLLM runs it so): a padding-only mask instead of the decoder's causal one
    bidirectional: bool = False

    def expected_info(self, ctx: EngineContext) -> ModelInfo:
        if self.task == "embed":
            return ModelInfo(
                id=ctx.served_name,
                context_window=self.context_window or DEFAULT_CONTEXT_WINDOW,
                max_output_tokens=1,
                supports_tools=False,
                task="embed",
                supports_dimensions=self.supports_dimensions,
            )
        return ModelInfo(
            id=ctx.served_name,
            context_window=self.context_window or DEFAULT_CONTEXT_WINDOW,
            max_output_tokens=self.max_output_tokens,
            enforces_constraints=True,
            supports_logprobs=True,
            supports_echo=True,
        )


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A checkpoint loaded for serving: what the scheduler and the prompt side need."""

    info: ModelInfo
    tokenizer: QwenTokenizer
    template: ChatTemplate
    model: Any  # a SlotModel
    grammars: Any  # a decoding.compiler.GrammarCompiler for the model's vocabulary
    eos: frozenset[int]


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
    constraint: Any = None  # a decoding.constraint.Constraint when the output is grammar-bound
    slot: int = -1
    position: int = 0  # cache length, i.e. where the next token goes
    last_token: int = 0
    generated: int = 0
    done: bool = False
    #: an engines.transformers.logprob.Aligner when logprobs are asked: it holds those of
    #: tokens whose text is still held back (by the decoder or a stop string)
    aligner: Any = None


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
    """A :class:`~qwen_gateway.engines.base.TokenBackend` over a loaded Qwen2 model; its
    scheduler thread runs from construction until ``aclose``.

    One request cannot stop the scheduler: whatever fails while a request is admitted,
    prefilled, sampled, constrained or detokenised fails that request only (400 when its
    parameters are at fault, else 500, logged with the traceback). A failure of the scheduler
    itself fails the requests in flight (503) and restarts it, at most
    :data:`MAX_CRASHES_IN_A_ROW` times without serving a request in between; then the engine
    stays down (``health().down``) so that /health fails and the process gets restarted.
    """

    def __init__(
        self, config: TransformersConfig, loaded: LoadedModel, observer: EngineObserver = QUIET
    ) -> None:
        self.config = config
        self._info = loaded.info
        self.tokenizer = loaded.tokenizer
        self._observer = observer
        #: Fault injection seam: called as the scheduler enters each stage (see Stage).
        self.probe: Probe | None = None
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._submit_lock = threading.Lock()  # no submission slips in after the engine failed
        self._loop = asyncio.get_running_loop()
        self._failed: BaseException | None = None  # down for good
        self._down = False  # the scheduler is not running: restarting, or down for good
        self._restarts = 0
        self._crashes_in_row = 0  # reset when a request is served
        self._ids = itertools.count()
        # Scheduler-thread state.
        self._waiting: deque[_Group] = deque()
        self._running: list[_Choice] = []
        self._groups: dict[str, _Group] = {}
        self._free_slots = list(range(config.max_batch_size))
        self._outbox: list[tuple[_Sink, EngineEvent | GatewayError]] = []
        self._eos = loaded.eos
        self._model = loaded.model
        self._grammars = loaded.grammars
        # One compilation at a time per tenant (a lock lives while someone holds it).
        self._compile_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._steps = 0  # decode steps run (the clock of abort delays)
        self._submitted = 0  # written by the event loop only
        self._dequeued = 0  # written by the scheduler thread only
        observer.watch_load(lambda: (len(self._running), self._submitted - self._dequeued))
        self._thread = threading.Thread(target=self._main, name="qwen-engine", daemon=True)
        self._thread.start()

    # ---- lifecycle --------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def health(self) -> EngineHealth:
        return EngineHealth(ready=self._failed is None and not self._down, down=self._down)

    async def aclose(self) -> None:
        if self._thread.is_alive():
            self._inbox.put(("stop", None))
            await asyncio.to_thread(self._thread.join)

    # ---- request side (event loop) ---------------------------------------

    async def generate(self, job: GenerationJob) -> AsyncGenerator[EngineEvent, None]:
        n, constraint, meter = job.n, job.constraint, job.meter
        self._check_up()
        if self._submitted - self._dequeued >= self.config.max_waiting:
            raise EngineOverloaded(
                "The engine's queue is full; retry shortly.", headers={"Retry-After": "1"}
            )
        if n > self.config.max_batch_size:
            raise EngineOverloaded(f"n={n} exceeds the engine's batch size.")
        grammar = None
        if constraint is not None:
            grammar = await self._grammar(constraint, job.tenant)
        rid = f"{job.request_id or 'req'}-{next(self._ids)}"
        kind = constraint.kind if constraint is not None else None
        group = _Group(rid, list(job.prompt), job.sampling, n, _Sink(), grammar, kind, meter=meter)
        with self._submit_lock:
            self._check_up()
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

    def _check_up(self) -> None:
        if self._failed is not None or self._down:
            raise EngineUnavailable(
                "The engine is down; retry shortly.", headers={"Retry-After": "5"}
            )

    async def _grammar(self, constraint: OutputConstraint, tenant: str) -> Any:
        """The compiled grammar: a cached one at once, else compiled after the tenant's earlier
        compilations (one at a time per tenant), so a slow schema delays only its sender."""
        compiler = self._grammars
        job = await asyncio.to_thread(self._job, constraint)
        hit = compiler.cached(job)
        if hit is not None:
            return hit
        lock = self._compile_locks.get(tenant)
        if lock is None:
            lock = self._compile_locks[tenant] = asyncio.Lock()
        async with lock:
            return await compiler.compile_async(job, tenant)

    def _job(self, constraint: OutputConstraint) -> Any:
        if constraint.kind == "tool_calls":
            return self._grammars.tools_job(constraint.tools, parallel=constraint.parallel)
        return self._grammars.schema_job(constraint.schema)

    # ---- scheduler thread -------------------------------------------------

    def _main(self) -> None:
        import torch

        with torch.inference_mode():
            try:
                self._serve()
            except BaseException as exc:
                log.exception("engine scheduler failed for good")
                self._give_up(exc)

    def _serve(self) -> None:
        """Run the scheduler; after a crash fail what was in flight and start it again."""
        while True:
            try:
                self._schedule()
                return  # stopped
            except Exception:
                log.exception("engine scheduler crashed")
            self._down = True
            self._crashes_in_row += 1
            self._reset(
                EngineUnavailable("The engine restarted; retry.", headers={"Retry-After": "1"})
            )
            if self._crashes_in_row >= MAX_CRASHES_IN_A_ROW:
                raise RuntimeError(f"the scheduler crashed {self._crashes_in_row} times in a row")
            self._enter("restart", "")
            self._restarts += 1
            self._observer.restarted()
            log.warning("engine scheduler restarted (%d restarts so far)", self._restarts)
            self._down = False

    def _reset(self, error: GatewayError) -> None:
        """Fail every request in flight and start from empty scheduler state."""
        self._fail_all(error)
        self._running.clear()
        self._groups.clear()
        self._free_slots = list(range(self.config.max_batch_size))

    def _give_up(self, exc: BaseException) -> None:
        with self._submit_lock:
            self._failed = exc
            self._down = True
        with contextlib.suppress(queue.Empty):  # submissions not yet seen fail too
            while True:
                kind, payload = self._inbox.get_nowait()
                if kind == "submit":
                    self._groups[payload.request_id] = payload
                    self._dequeued += 1
        error = EngineUnavailable("The engine is down.", headers={"Retry-After": "5"})
        try:
            self._fail_all(error)
        except Exception:
            log.exception("failing the requests in flight failed")

    def _enter(self, stage: Stage, request_id: str) -> None:
        if self.probe is not None:
            self.probe(stage, request_id)

    def _schedule(self) -> None:
        while True:
            idle = not self._running and not self._waiting
            if not self._drain_inbox(block=idle):
                return
            self._enter("loop", "")
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
        self._observer.aborted(self._steps - requested_at_step)

    def _admit(self) -> None:
        while self._waiting and len(self._free_slots) >= self._waiting[0].n:
            group = self._waiting.popleft()
            self._dequeued += 1
            slots = [self._free_slots.pop(0) for _ in range(group.n)]
            try:
                logits = self._start(group, slots)
            except Exception as exc:
                owned = {c.slot for c in group.choices}  # freed with the choices
                self._free_slots = sorted(self._free_slots + [s for s in slots if s not in owned])
                self._fail_request(group, "admit", exc)
                continue
            if group.sampling.max_tokens == 0:  # echo only: the prompt and its logprobs
                for choice in group.choices:
                    self._finish(choice, "length")
                continue
            self._sample_and_advance(group.choices, logits)
            self._running.extend(c for c in group.choices if not c.done)

    def _start(self, group: _Group, slots: list[int]) -> Any:
        """Prefill ``group``'s prompt and make its choices; the first token's logits [n, V]."""
        from qwen_gateway.engines.transformers.decoding.constraint import Constraint
        from qwen_gateway.engines.transformers.sampler import SequenceSampler

        model = self._model
        self._enter("admit", group.request_id)
        samplers = [
            SequenceSampler(group.sampling, group.prompt, model.device, i) for i in range(group.n)
        ]
        self._enter("prefill", group.request_id)
        top = group.sampling.prompt_logprobs
        if top is None:
            logits = model.prefill(slots[0], group.prompt)
        else:
            from qwen_gateway.engines.transformers.logprob import prompt_entries

            logits, hidden = model.prefill_keeping(slots[0], group.prompt)
            entries = prompt_entries(self.tokenizer, model.logits_of, hidden, group.prompt, top)
            self._outbox.append((group.sink, PromptLogprobs(entries)))
        for slot in slots[1:]:
            model.copy_slot(slots[0], slot, len(group.prompt))
        group.open_choices = group.n
        for i, slot in enumerate(slots):
            choice = _Choice(
                group=group,
                index=i,
                sampler=samplers[i],
                decoder=self.tokenizer.decoder(),
                stop=StopMatcher(group.sampling.stop),
                slot=slot,
                position=len(group.prompt),
            )
            if group.grammar is not None:
                choice.constraint = Constraint(group.grammar, group.sampling.max_tokens or 1)
            group.choices.append(choice)
        return logits.unsqueeze(0).expand(group.n, -1).clone()

    def _decode_step(self) -> None:
        # The forward pass takes no request's parameters (tokens come from the vocabulary,
        # positions are bounded by the window): when it fails, the device or the code is at
        # fault, not one request, so the requests in the step fail and the engine goes on.
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
        self._observer.decode_step(len(batch))
        for c in batch:
            c.position += 1
        self._sample_and_advance(batch, logits)

    def _sample_and_advance(self, choices: list[_Choice], logits: Any) -> None:
        """One token for each choice; a failure at any stage fails that choice's request."""
        from qwen_gateway.engines.transformers.sampler import greedy_batch

        # the model's distribution, before grammar masks and sampling change the logits
        wanted = [i for i, c in enumerate(choices) if c.group.sampling.logprobs is not None]
        rows: dict[int, Any] = {}
        if wanted:
            import torch

            soft = torch.log_softmax(logits[wanted], dim=-1)
            rows = {i: soft[j] for j, i in enumerate(wanted)}
        for i, choice in enumerate(choices):
            if choice.constraint is not None and not choice.done:
                try:
                    self._enter("constrain", choice.group.request_id)
                    budget = (choice.group.sampling.max_tokens or 1) - choice.generated
                    choice.constraint.apply(logits[i], budget)
                except Exception as exc:
                    self._fail_request(choice.group, "constrain", exc)
        try:  # one argmax for the batch; it takes no request's parameters
            batch = greedy_batch(logits, [c.sampler for c in choices])
        except Exception:
            log.exception("sampling step failed")
            for group in {c.group for c in choices}:
                self._fail_group(group)
            return
        vocab = logits.shape[-1]
        for i, choice in enumerate(choices):
            if choice.done:
                continue
            stage: Stage = "sample"
            try:
                self._enter(stage, choice.group.request_id)
                token = batch[i] if batch is not None else choice.sampler.pick(logits[i])
                if choice.constraint is not None and token not in self._eos:
                    stage = "constrain"
                    self._enter(stage, choice.group.request_id)
                    choice.constraint.accept(token)
                stage = "sample"
                choice.sampler.observe(token, vocab, self._model.device)
                stage = "detokenise"
                self._enter(stage, choice.group.request_id)
                if i in rows and token not in self._eos:
                    self._logprob(rows[i], token, choice)
                self._advance(choice, token)
            except Exception as exc:
                self._fail_request(choice.group, stage, exc)

    def _logprob(self, row: Any, token: int, choice: _Choice) -> None:
        from qwen_gateway.engines.transformers.logprob import Aligner, chosen

        if choice.aligner is None:
            choice.aligner = Aligner()
        top = choice.group.sampling.logprobs or 0
        choice.aligner.add(chosen(self.tokenizer, row, token, top))

    def _delta(self, choice: _Choice, text: str, *, last: bool = False) -> TextDelta:
        """``text`` with the logprobs of the tokens that make it (``last``: and of any
        token left, the output being complete)."""
        aligner = choice.aligner
        if aligner is None:
            return TextDelta(choice.index, text)
        logprobs: tuple[TokenLogprob, ...] = aligner.take(len(text))
        if last:
            logprobs += aligner.rest()
        return TextDelta(choice.index, text, logprobs)

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
            self._outbox.append((sink, self._delta(choice, text)))
        if stopped:
            self._finish(choice, "stop", flush=False)
        elif choice.generated >= (group.sampling.max_tokens or 1):
            self._finish(choice, "length")

    def _finish(self, choice: _Choice, reason: FinishReason, *, flush: bool = True) -> None:
        group = choice.group
        if flush:
            text, _ = choice.stop.feed(choice.decoder.flush())
            text += choice.stop.flush()
            if text or (choice.aligner is not None and choice.aligner.pending):
                self._outbox.append((group.sink, self._delta(choice, text, last=True)))
        choice.done = True
        self._release(choice)
        matched = choice.stop.matched if reason == "stop" else None
        self._outbox.append((group.sink, ChoiceFinished(choice.index, reason, matched)))
        group.open_choices -= 1
        if group.open_choices == 0:
            self._groups.pop(group.request_id, None)
            usage = Usage(len(group.prompt), group.completion_tokens)
            self._outbox.append((group.sink, usage))
            self._crashes_in_row = 0  # the scheduler served a request

    def _release(self, choice: _Choice) -> None:
        if choice in self._running:
            self._running.remove(choice)
        if choice.slot >= 0:
            self._free_slots.append(choice.slot)
            self._free_slots.sort()
            choice.slot = -1

    def _fail_request(self, group: _Group, stage: Stage, exc: Exception) -> None:
        """Fail ``group`` for an exception at ``stage``: the client's own error when its
        request is at fault (a :class:`GatewayError`, e.g. a parameter the sampler refuses),
        else a 500 with the traceback in the log."""
        if isinstance(exc, GatewayError):
            log.info("request %s refused at %s: %s", group.request_id, stage, exc.code)
            self._fail_group(group, exc)
            return
        log.exception("request %s failed at %s", group.request_id, stage, exc_info=exc)
        self._fail_group(group)

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
        if not self._outbox:
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


def load_model(config: TransformersConfig, served_name: str, model: str) -> LoadedModel:
    """Load ``model`` (a directory or a Hugging Face id) for serving; blocking (seconds)."""
    with _LOAD_LOCK:  # engines of several deployments or replicas load one at a time
        return _load_model(config, served_name, model)


def _load_model(cfg: TransformersConfig, served_name: str, model: str) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM

    from qwen_gateway.engines.transformers.decoding.compiler import GrammarCompiler
    from qwen_gateway.engines.transformers.model import CacheShape, SlotModel

    directory = _resolve_model_dir(model)
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype_name = cfg.dtype
    if dtype_name == "auto":
        dtype_name = "bfloat16" if device.startswith("cuda") else "float32"
    tokenizer = QwenTokenizer.from_dir(directory)
    template = ChatTemplate.from_dir(directory)
    hf: Any = AutoModelForCausalLM.from_pretrained(str(directory), dtype=getattr(torch, dtype_name))
    hf = hf.to(device).eval()
    window = cfg.context_window or _model_context_window(hf.config)
    info = ModelInfo(
        id=served_name,
        created=int(time.time()),
        context_window=window,
        max_output_tokens=min(cfg.max_output_tokens, window),
        enforces_constraints=True,
        supports_logprobs=True,
        supports_echo=True,
    )
    eos = getattr(hf.generation_config, "eos_token_id", None)
    ids = eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else []
    return LoadedModel(
        info=info,
        tokenizer=tokenizer,
        template=template,
        model=SlotModel(hf, CacheShape(slots=cfg.max_batch_size, max_len=window)),
        grammars=GrammarCompiler(tokenizer, int(hf.config.vocab_size)),
        eos=frozenset({IM_END_ID, ENDOFTEXT_ID, *ids}),
    )


async def create_engine(config: TransformersConfig, ctx: EngineContext) -> Engine:
    """Load the model (in a worker thread) and start its scheduler."""
    if config.task == "embed":
        return await _create_embedder(config, ctx)
    model = config.model or ctx.default_model
    try:
        loaded = await asyncio.to_thread(load_model, config, ctx.served_name, model)
    except Exception as exc:
        log.exception("model load failed")
        raise EngineUnavailable(f"The model failed to load: {exc}") from exc
    backend = TransformersBackend(config, loaded, ctx.observer)
    return PromptEngine(backend, loaded.tokenizer, loaded.template, ctx.observer)


async def _create_embedder(config: TransformersConfig, ctx: EngineContext) -> Engine:
    from qwen_gateway.engines.transformers.embedding import (
        EmbeddingSettings,
        TransformersEmbedder,
        load_embedder,
    )

    model = config.model or ctx.default_embedding_model
    try:
        loaded = await asyncio.to_thread(
            load_embedder,
            model,
            ctx.served_name,
            device=config.device,
            dtype=config.dtype,
            context_window=config.context_window,
            supports_dimensions=config.supports_dimensions,
        )
    except Exception as exc:
        log.exception("model load failed")
        raise EngineUnavailable(f"The model failed to load: {exc}") from exc
    settings = EmbeddingSettings(
        max_batch_size=config.max_batch_size,
        max_waiting=config.max_waiting,
        max_request_tokens=config.max_embedding_tokens,
        bidirectional=config.bidirectional,
    )
    return TransformersEmbedder(settings, loaded, ctx.observer)


PLUGIN = EnginePlugin("transformers", TransformersConfig, create_engine)
