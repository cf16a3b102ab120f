"""The account stage: a usage entry for each API generation request, its permit settled once,
in-flight requests counted so that shutdown can wait for them."""

from __future__ import annotations

import asyncio
import logging

import pytest

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.policy.principal import Principal
from qwen_gateway.policy.ratelimit import Permit
from qwen_gateway.service.account import Accounting
from qwen_gateway.store.usage import UsageEntry


class Sinks:
    def __init__(self, fail: bool = False) -> None:
        self.entries: list[UsageEntry] = []
        self.settled: list[tuple[Permit, int]] = []
        self.fail = fail

    async def settle(self, permit: Permit, completion_tokens: int) -> None:
        if self.fail:
            raise ConnectionError("the limiter is gone")
        self.settled.append((permit, completion_tokens))


def _accounting(sinks: Sinks) -> Accounting:
    return Accounting(sinks.entries.append, sinks.settle)


async def test_a_generation_request_leaves_one_usage_entry_and_settles_its_permit() -> None:
    sinks = Sinks()
    account = _accounting(sinks)
    record = RequestRecord("req_1", model="m", deployment="d", stream=True)
    record.principal = Principal("key:7", key_id=7)
    record.prompt_tokens, record.completion_tokens = 5, 9
    permit = Permit((), 5)
    record.permit = permit
    account.start()
    await account.finish(record, "/v1/chat/completions", "POST", 200)
    (entry,) = sinks.entries
    assert (entry.request_id, entry.principal, entry.key_id) == ("req_1", "key:7", 7)
    assert (entry.model, entry.deployment, entry.path, entry.status) == (
        "m", "d", "/v1/chat/completions", 200,
    )  # fmt: skip
    assert (entry.prompt_tokens, entry.completion_tokens, entry.stream) == (5, 9, True)
    assert sinks.settled == [(permit, 9)]
    assert record.permit is None  # settled once


@pytest.mark.parametrize(
    ("endpoint", "method"),
    [("/health", "GET"), ("/v1/models", "GET"), ("/admin/keys", "POST"), (None, "POST")],
)
async def test_other_requests_leave_no_usage_entry(endpoint: str | None, method: str) -> None:
    sinks = Sinks()
    account = _accounting(sinks)
    account.start()
    await account.finish(RequestRecord("r"), endpoint, method, 200)
    assert sinks.entries == []
    assert account.in_flight == 0


async def test_anonymous_requests_are_accounted_to_anonymous() -> None:
    sinks = Sinks()
    account = _accounting(sinks)
    account.start()
    await account.finish(RequestRecord("r"), "/v1/completions", "POST", 499)
    assert (sinks.entries[0].principal, sinks.entries[0].key_id) == ("anonymous", None)


async def test_a_failing_settle_is_logged_and_the_request_still_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    account = _accounting(Sinks(fail=True))
    record = RequestRecord("r")
    record.permit = Permit((), 0)
    account.start()
    with caplog.at_level(logging.ERROR):
        await account.finish(record, "/v1/completions", "POST", 200)
    assert "settling rate limits failed" in caplog.text
    assert account.in_flight == 0


async def test_idle_waits_for_every_request_in_flight() -> None:
    account = _accounting(Sinks())
    await account.idle()  # nothing in flight: at once
    account.start()
    account.start()
    assert account.in_flight == 2
    waiting = asyncio.ensure_future(account.idle())
    await account.finish(RequestRecord("a"), None, "GET", 200)
    assert account.in_flight == 1
    assert not waiting.done()
    await account.finish(RequestRecord("b"), None, "GET", 200)
    await asyncio.wait_for(waiting, 5)
    assert account.in_flight == 0
