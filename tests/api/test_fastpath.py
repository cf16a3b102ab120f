"""The hot endpoints as plain ASGI: the same answers, headers, errors and accounting as the
FastAPI route they stand in for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import httpx
import pytest

from qwen_gateway.api.errors import install_error_handlers
from qwen_gateway.api.fastpath import GatewayApp
from qwen_gateway.api.middleware import GatewayMiddleware
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.errors import RateLimited
from qwen_gateway.observability.metrics import Metrics
from qwen_gateway.policy.auth import Authenticator, FailureThrottle
from qwen_gateway.service.account import Accounting
from qwen_gateway.service.authenticate import Authenticate
from qwen_gateway.store.audit import AuditEntry

PATH = "/v1/chat/completions"
KEY = "sk-static-test-key"


class Service:
    """Answers as a service would; ``hold`` makes the call wait (until cancelled)."""

    def __init__(self) -> None:
        self.hold = False
        self.fail: BaseException | None = None
        self.started = asyncio.Event()
        self.cancelled = False
        self.seen: list[Mapping[str, Any]] = []

    async def chat(self, raw: Mapping[str, Any], record: RequestRecord) -> Any:
        self.seen.append(raw)
        record.model = str(raw.get("model"))
        record.route = "fake→fake/0"
        self.started.set()
        if self.fail is not None:
            raise self.fail
        if self.hold:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        if raw.get("stream"):
            return self._chunks()
        return {"id": "x", "object": "chat.completion", "choices": []}

    async def _chunks(self) -> AsyncGenerator[dict[str, int], None]:
        for n in range(3):
            yield {"n": n}


class Finished(Accounting):
    """The account stage, noting each request that ended."""

    def __init__(self) -> None:
        super().__init__(lambda entry: None, self._settle)
        self.calls: list[tuple[RequestRecord, str | None, str, int]] = []

    async def _settle(self, permit: Any, completion_tokens: int) -> None:
        return None

    async def finish(
        self, record: RequestRecord, endpoint: str | None, method: str, status: int
    ) -> None:
        self.calls.append((record, endpoint, method, status))
        await super().finish(record, endpoint, method, status)


def make_app(service: Service, finished: Finished) -> GatewayApp:
    audit: list[AuditEntry] = []
    auth = Authenticate(
        Authenticator(
            enabled=True,
            keys=None,
            jwt=None,
            static_key=KEY,
            audit=audit.append,
            throttle=FailureThrottle(100),
        )
    )
    app = GatewayApp(docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)

    @app.post(PATH)
    async def slow_route() -> dict[str, str]:  # what FastAPI would serve
        return {"served": "by fastapi"}

    app.add_hot_route(PATH, service.chat, auth, keepalive=15.0)
    app.add_middleware(
        GatewayMiddleware, metrics=Metrics(), max_body_bytes=10_000, account=finished
    )
    return app


@pytest.fixture
def service() -> Service:
    return Service()


@pytest.fixture
def finished() -> Finished:
    return Finished()


@pytest.fixture
async def http(service: Service, finished: Finished) -> AsyncGenerator[httpx.AsyncClient, None]:
    transport = httpx.ASGITransport(app=make_app(service, finished), raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gw", headers={"Authorization": f"Bearer {KEY}"}
    ) as client:
        yield client


async def test_a_complete_answer_with_request_id_route_header_and_accounting(
    http: httpx.AsyncClient, service: Service, finished: Finished
) -> None:
    resp = await http.post(PATH, json={"model": "m"}, headers={"X-Request-ID": "abc-1"})
    assert resp.status_code == 200
    assert resp.json() == {"id": "x", "object": "chat.completion", "choices": []}
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["x-request-id"] == "abc-1"
    assert resp.headers["x-qwen-gateway-route"] == "fake→fake/0".replace("→", "?")
    assert service.seen == [{"model": "m"}]
    [(record, endpoint, method, status)] = finished.calls
    assert (endpoint, method, status) == (PATH, "POST", 200)
    assert record.principal is not None and record.principal.id == "static"


async def test_a_stream_is_sent_as_server_sent_events(http: httpx.AsyncClient) -> None:
    resp = await http.post(PATH, json={"model": "m", "stream": True})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert resp.text == 'data: {"n":0}\n\ndata: {"n":1}\n\ndata: {"n":2}\n\ndata: [DONE]\n\n'


@pytest.mark.parametrize(
    ("headers", "content", "status", "code"),
    [
        ({"Authorization": "Bearer wrong"}, b'{"model":"m"}', 401, "invalid_api_key"),
        ({"Content-Type": "text/plain"}, b'{"model":"m"}', 400, "invalid_content_type"),
        ({"Content-Type": "application/json"}, b'{"model": NaN}', 400, "invalid_json"),
        ({"Content-Type": "application/json"}, b'{"n": 1e999}', 400, "invalid_json"),
        ({"Content-Type": "application/json"}, b"[" * 5000, 400, "invalid_json"),
        ({"Content-Type": "application/json"}, b"x" * 20_000, 413, "request_too_large"),
    ],
)
async def test_refusals_come_in_the_openai_envelope(
    http: httpx.AsyncClient,
    finished: Finished,
    headers: dict[str, str],
    content: bytes,
    status: int,
    code: str,
) -> None:
    resp = await http.post(PATH, content=content, headers=headers)
    assert resp.status_code == status
    assert resp.json()["error"]["code"] == code
    assert "x-request-id" in resp.headers
    # a declared length over the cap is answered before the request counts (the middleware's)
    assert [c[3] for c in finished.calls] == ([] if status == 413 else [status])


async def test_credentials_in_the_query_string_are_refused(http: httpx.AsyncClient) -> None:
    resp = await http.post(PATH, params={"api_key": KEY}, json={"model": "m"})
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "credentials_in_query"


async def test_a_gateway_error_keeps_its_headers(http: httpx.AsyncClient, service: Service) -> None:
    service.fail = RateLimited("slow down", headers={"Retry-After": "7"})
    resp = await http.post(PATH, json={"model": "m"})
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "7"
    assert resp.json()["error"]["message"] == "slow down"


async def test_a_bug_is_a_500_in_the_envelope(
    http: httpx.AsyncClient, service: Service, finished: Finished
) -> None:
    service.fail = ValueError("our bug")
    resp = await http.post(PATH, json={"model": "m"})
    assert resp.status_code == 500
    assert resp.json()["error"]["code"] == "internal_error"
    assert [c[3] for c in finished.calls] == [500]


async def test_other_methods_and_paths_go_to_fastapi(http: httpx.AsyncClient) -> None:
    assert (await http.get(PATH)).status_code == 405
    assert (await http.post(PATH + "/")).status_code in (307, 404)


async def test_a_client_that_leaves_cancels_the_work_and_is_recorded_as_499(
    service: Service, finished: Finished
) -> None:
    service.hold = True
    app = make_app(service, finished)
    body = b'{"model":"m"}'
    left = asyncio.Event()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await left.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"authorization", f"Bearer {KEY}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("gw", 80),
        "scheme": "http",
        "http_version": "1.1",
    }
    task = asyncio.create_task(app(scope, receive, send))
    await service.started.wait()
    left.set()
    await task  # ends normally: no one is left to answer
    assert service.cancelled
    assert sent == []
    [(record, endpoint, _, status)] = finished.calls
    assert (endpoint, status, record.cancelled) == (PATH, 499, True)
    assert not task.cancelled()
