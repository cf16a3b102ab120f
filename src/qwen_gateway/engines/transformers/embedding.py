"""The in-process embedding engine: a Qwen2 decoder without its LM head (the gte-Qwen2
recipe), batched on a worker thread.

Each input is tokenised and ends with ``<|endoftext|>`` (as the gte-Qwen2 tokenizer appends
it); the vector is the final hidden state of that last token, L2-normalised. Requests queue
their inputs on one inbox; the worker thread takes whatever is waiting (inputs of several
requests together, up to ``max_batch_size`` inputs and :data:`BATCH_TOKENS` padded tokens),
runs one right-padded forward pass and hands each request its vectors once all are done.
With causal attention, padding on the right never changes a real token's state, so a text's
vector is the same alone and in a batch (up to float rounding).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from qwen_gateway.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    EngineEvent,
    GenerationRequest,
    ModelInfo,
)
from qwen_gateway.engines.base import QUIET, EngineHealth, EngineObserver
from qwen_gateway.errors import (
    EngineOverloaded,
    EngineUnavailable,
    GatewayError,
    InternalError,
    InvalidRequest,
)
from qwen_gateway.qwen.limits import PROMPT_CHARS_PER_TOKEN
from qwen_gateway.qwen.tokenizer import ENDOFTEXT_ID, QwenTokenizer, tokenized

log = logging.getLogger(__name__)

#: Padded tokens (inputs x longest input) one forward pass takes at most; a longer input
#: runs alone.
BATCH_TOKENS: Final = 16_384


@dataclass(frozen=True, slots=True)
class EmbeddingSettings:
    """What the embedding engine takes from its deployment's ``engine: transformers`` config."""

    max_batch_size: int = 32
    max_waiting: int = 256
    max_request_tokens: int = 300_000
    #: every token attends to every other (a padding-only mask), as gte-Qwen2 was trained;
    #: off: the decoder's causal attention
    bidirectional: bool = False


@dataclass(frozen=True, slots=True)
class LoadedEmbedder:
    info: ModelInfo
    tokenizer: QwenTokenizer
    model: Any  # a transformers Qwen2Model, in eval mode
    device: Any  # torch.device


@dataclass(eq=False)
class _Job:
    ids: list[list[int]]
    dimensions: int | None
    future: asyncio.Future[EmbeddingResult]
    vectors: list[bytes | None] = field(default_factory=list)
    remaining: int = 0
    cancelled: bool = False
    failed: bool = False


class TransformersEmbedder:
    """Implements :class:`~qwen_gateway.engines.base.Engine` (generation refused) and
    :class:`~qwen_gateway.engines.base.Embedder`; its worker thread runs from construction
    until ``aclose``."""

    def __init__(
        self, settings: EmbeddingSettings, loaded: LoadedEmbedder, observer: EngineObserver = QUIET
    ) -> None:
        self.settings = settings
        self._info = loaded.info
        self.tokenizer = loaded.tokenizer
        self._model = loaded.model
        self._device = loaded.device
        self._observer = observer
        self._loop = asyncio.get_running_loop()
        self._inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._waiting = 0  # jobs submitted and not yet finished (event loop side)
        self._running = 0  # inputs in the forward pass now (worker side)
        self._down = False
        #: batch size -> forward passes run with it (what concurrency made of the inputs)
        self.batch_sizes: Counter[int] = Counter()
        observer.watch_load(lambda: (self._running, self._waiting))
        self._thread = threading.Thread(target=self._main, name="qwen-embed", daemon=True)
        self._thread.start()

    # ---- Engine -------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        raise InvalidRequest(
            f"The model '{request.model}' is an embedding model: it does not generate text.",
            param="model",
        )
        yield  # pragma: no cover - makes this an async generator

    async def health(self) -> EngineHealth:
        return EngineHealth(ready=not self._down)

    async def aclose(self) -> None:
        self._down = True  # no new requests; those queued are failed by the worker
        if self._thread.is_alive():
            self._inbox.put(None)
            await asyncio.to_thread(self._thread.join)
        with contextlib.suppress(queue.Empty):  # none should be left; if one is, it fails
            while True:
                job = self._inbox.get_nowait()
                if job is not None and not job.future.done():
                    job.future.set_exception(EngineUnavailable("The server is shutting down."))

    # ---- Embedder -----------------------------------------------------------

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        if self._down:
            raise EngineUnavailable("The engine is down.", headers={"Retry-After": "5"})
        dims = self._check_dimensions(request.dimensions)
        chars = self._check_size(request)
        ids = await tokenized(lambda: self._tokenise(request), chars)
        if self._down:  # closed while tokenising: the worker may be gone
            raise EngineUnavailable("The engine is down.", headers={"Retry-After": "5"})
        if self._waiting >= self.settings.max_waiting:
            raise EngineOverloaded(
                "The engine's queue is full; retry shortly.", headers={"Retry-After": "1"}
            )
        job = _Job(ids, dims, self._loop.create_future())
        job.vectors = [None] * len(ids)
        job.remaining = len(ids)
        self._waiting += 1
        self._inbox.put(job)
        try:
            return await job.future
        finally:
            self._waiting -= 1
            if not job.future.done():
                job.cancelled = True  # the worker skips what is left of it

    def _check_dimensions(self, dimensions: int | None) -> int | None:
        width = self._info.embedding_dimensions or 0
        if dimensions is None or dimensions == width:
            return None
        if not self._info.supports_dimensions:
            raise InvalidRequest(
                f"The model '{self._info.id}' does not support 'dimensions'.",
                param="dimensions",
                code="unsupported_parameter",
            )
        if not 1 <= dimensions <= width:
            raise InvalidRequest(
                f"Invalid value for 'dimensions': {dimensions}. The model '{self._info.id}' "
                f"gives vectors of at most {width} dimensions.",
                param="dimensions",
                code="invalid_value",
            )
        return dimensions

    def _check_size(self, request: EmbeddingRequest) -> int:
        """The inputs' characters; a 400 ``input`` without tokenising when they are far more
        than the window, or the request's token bound, could hold."""
        window = self._info.context_window
        for i, item in enumerate(request.inputs):
            if isinstance(item, str) and len(item) > window * PROMPT_CHARS_PER_TOKEN:
                raise InvalidRequest(
                    f"Input {i} is too long: {len(item)} characters, far more than the "
                    f"{window} tokens the model '{self._info.id}' takes.",
                    param="input",
                    code="context_length_exceeded",
                )
        chars = sum(len(x) for x in request.inputs)
        if chars > self.settings.max_request_tokens * PROMPT_CHARS_PER_TOKEN:
            raise InvalidRequest(
                f"The inputs hold {chars} characters, far more than the "
                f"{self.settings.max_request_tokens} tokens one request may embed.",
                param="input",
                code="invalid_value",
            )
        return chars

    def _tokenise(self, request: EmbeddingRequest) -> list[list[int]]:
        """Each input's ids ending with <|endoftext|>; the bounds checked (400 ``input``)."""
        window = self._info.context_window
        vocab = self.tokenizer.vocab_size
        out: list[list[int]] = []
        total = 0
        for i, item in enumerate(request.inputs):
            if isinstance(item, str):
                ids = self.tokenizer.encode_text(item)
            else:
                ids = list(item)
                bad = next((t for t in ids if not 0 <= t < vocab), None)
                if bad is not None:
                    raise InvalidRequest(
                        f"Invalid value for 'input': token id {bad} at input {i} is outside "
                        f"the vocabulary (0..{vocab - 1}).",
                        param="input",
                        code="invalid_value",
                    )
            if not ids or ids[-1] != ENDOFTEXT_ID:
                ids.append(ENDOFTEXT_ID)
            if len(ids) > window:
                raise InvalidRequest(
                    f"Input {i} is too long: {len(ids)} tokens, and the model "
                    f"'{self._info.id}' takes at most {window}.",
                    param="input",
                    code="context_length_exceeded",
                )
            total += len(ids)
            if total > self.settings.max_request_tokens:
                raise InvalidRequest(
                    f"The inputs hold more than {self.settings.max_request_tokens} tokens, the "
                    "most one request may embed; send them in several requests.",
                    param="input",
                    code="invalid_value",
                )
            out.append(ids)
        return out

    # ---- worker thread ------------------------------------------------------

    def _main(self) -> None:
        import torch

        pending: deque[tuple[_Job, int]] = deque()
        with torch.inference_mode():
            while True:
                batch: list[tuple[_Job, int]] = []
                try:
                    if not pending:
                        job = self._inbox.get()
                        if job is None:
                            return self._stop(pending)
                        pending.extend((job, i) for i in range(len(job.ids)))
                    while True:  # whatever else is waiting joins
                        try:
                            job = self._inbox.get_nowait()
                        except queue.Empty:
                            break
                        if job is None:
                            return self._stop(pending)
                        pending.extend((job, i) for i in range(len(job.ids)))
                    batch = self._take(pending)
                    if batch:
                        self._run(batch)
                except Exception:
                    log.exception("embedding worker failed")
                    error = InternalError("The engine failed while embedding.")
                    if batch:  # the batch's requests fail; other requests' inputs stay queued
                        self._fail_pending(deque(batch), error)
                    else:  # not a batch's fault: nothing queued can be trusted to run
                        self._fail_pending(pending, error)

    def _stop(self, pending: deque[tuple[_Job, int]]) -> None:
        """Shutting down: fail what is queued, and whatever was submitted meanwhile."""
        with contextlib.suppress(queue.Empty):
            while True:
                job = self._inbox.get_nowait()
                if job is not None:
                    pending.append((job, 0))
        self._fail_pending(pending, EngineUnavailable("The server is shutting down."))

    def _take(self, pending: deque[tuple[_Job, int]]) -> list[tuple[_Job, int]]:
        batch: list[tuple[_Job, int]] = []
        longest = 0
        while pending and len(batch) < self.settings.max_batch_size:
            job, i = pending[0]
            if job.cancelled or job.failed:
                pending.popleft()
                continue
            size = max(longest, len(job.ids[i]))
            if batch and size * (len(batch) + 1) > BATCH_TOKENS:
                break
            pending.popleft()
            batch.append((job, i))
            longest = size
        return batch

    def _run(self, batch: list[tuple[_Job, int]]) -> None:
        import torch
        import torch.nn.functional as F

        seqs = [job.ids[i] for job, i in batch]
        longest = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), longest), ENDOFTEXT_ID, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        self._running = len(seqs)
        try:
            attention: Any = mask.to(self._device)
            if self.settings.bidirectional:  # (batch, 1, query, key): padded keys hidden only
                dtype = next(self._model.parameters()).dtype
                hidden = torch.finfo(dtype).min
                keys = attention[:, None, None, :].expand(len(seqs), 1, longest, longest)
                attention = torch.zeros(keys.shape, dtype=dtype, device=self._device)
                attention = attention.masked_fill(keys == 0, hidden)
            out = self._model(
                input_ids=ids.to(self._device), attention_mask=attention
            ).last_hidden_state
        except Exception:
            log.exception("embedding forward pass failed")
            for job in {job for job, _ in batch}:
                self._fail(job, InternalError("The engine failed while embedding."))
            return
        finally:
            self._running = 0
        self.batch_sizes[len(seqs)] += 1
        self._observer.decode_step(len(seqs))
        last = torch.tensor([len(s) - 1 for s in seqs], device=out.device)
        pooled = out[torch.arange(len(seqs), device=out.device), last].float()
        for row, (job, i) in enumerate(batch):
            vector = pooled[row]
            if job.dimensions is not None:
                vector = vector[: job.dimensions]
            unit = F.normalize(vector, p=2, dim=0)
            job.vectors[i] = unit.cpu().numpy().astype("<f4").tobytes()
            job.remaining -= 1
            if job.remaining == 0 and not job.cancelled:
                prompt = sum(len(s) for s in job.ids)
                result = EmbeddingResult(tuple(v or b"" for v in job.vectors), prompt)
                self._deliver(job, result)

    def _deliver(self, job: _Job, result: EmbeddingResult | GatewayError) -> None:
        def settle() -> None:
            if job.future.done():
                return
            if isinstance(result, GatewayError):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening
            self._loop.call_soon_threadsafe(settle)

    def _fail(self, job: _Job, error: GatewayError) -> None:
        if not job.failed:
            job.failed = True
            self._deliver(job, error)

    def _fail_pending(self, pending: deque[tuple[_Job, int]], error: GatewayError) -> None:
        for job in {job for job, _ in pending}:
            self._fail(job, error)
        pending.clear()


def load_embedder(model_dir: str, served_name: str, *, device: str, dtype: str,
                  context_window: int | None, supports_dimensions: bool) -> LoadedEmbedder:  # fmt: skip
    """Load an embedding checkpoint (a directory or a Hugging Face id); blocking."""
    import torch

    from qwen_gateway.engines.transformers.engine import (
        _LOAD_LOCK,
        _model_context_window,
        _resolve_model_dir,
    )

    with _LOAD_LOCK:  # transformers' lazy imports are not safe from several threads at once
        from transformers import AutoModel

        directory: Path = _resolve_model_dir(model_dir)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        tokenizer = QwenTokenizer.from_dir(directory)
        model: Any = AutoModel.from_pretrained(str(directory), dtype=getattr(torch, dtype))
        model = model.to(device).eval()
    window = context_window or _model_context_window(model.config)
    info = ModelInfo(
        id=served_name,
        created=int(time.time()),
        context_window=window,
        max_output_tokens=1,
        supports_tools=False,
        task="embed",
        embedding_dimensions=int(model.config.hidden_size),
        supports_dimensions=supports_dimensions,
    )
    return LoadedEmbedder(info, tokenizer, model, torch.device(device))
