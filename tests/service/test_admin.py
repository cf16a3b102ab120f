"""The admin service: key lifecycle, usage reports and the audit trail it writes, for the
admin API and the CLI alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from qwen_gateway.config import load_settings
from qwen_gateway.container import build_admin, build_store, open_store
from qwen_gateway.core.limits import KeyLimits
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.errors import InvalidRequest, NotFound
from qwen_gateway.service.account import usage_entry
from qwen_gateway.service.admin import CLI, Actor, AdminService

ADMIN = Actor("key:1", "10.0.0.9")


@pytest_asyncio.fixture
async def admin(tmp_path: Path) -> AsyncIterator[AdminService]:
    settings = load_settings({"data_dir": str(tmp_path)}, env={})
    async with build_admin(settings) as service:
        yield service


async def test_key_lifecycle_is_audited_with_actor_and_client(admin: AdminService) -> None:
    secret, created = await admin.create_key("ci", ADMIN, models=("m",), limits=KeyLimits(rpm=10))
    assert secret.startswith("sk-qg-") and created.limits.rpm == 10
    assert [k.id for k in await admin.list_keys()] == [created.id]
    assert (await admin.key(created.id)).name == "ci"
    new_secret, rotated = await admin.rotate_key(created.id, CLI)
    assert new_secret != secret and rotated.id == created.id
    revoked = await admin.revoke_key(created.id, ADMIN)
    assert revoked.revoked_at is not None
    events = list(reversed(await admin.audit(10)))
    assert [(e["action"], e["actor"], e["client"], e["target"]) for e in events] == [
        ("key.create", "key:1", "10.0.0.9", f"key:{created.id}"),
        ("key.rotate", "cli", None, f"key:{created.id}"),
        ("key.revoke", "key:1", "10.0.0.9", f"key:{created.id}"),
    ]
    assert events[0]["details"] == {"name": "ci", "prefix": created.prefix, "role": "inference"}
    assert secret not in repr(events) and new_secret not in repr(events)


async def test_new_limits_replace_the_keys_and_the_change_is_audited(
    admin: AdminService,
) -> None:
    _, created = await admin.create_key("ci", ADMIN, limits=KeyLimits(rpm=10, tpm=100))
    updated = await admin.update_limits(created.id, KeyLimits(rpm=20), ADMIN)
    assert updated.limits == KeyLimits(rpm=20)
    assert (await admin.key(created.id)).limits == KeyLimits(rpm=20)
    (event,) = await admin.audit(10, "key.update")
    assert event["details"]["limits"] == {"rpm": [10, 20], "tpm": [100, None]}
    with pytest.raises(InvalidRequest) as caught:
        await admin.update_limits(created.id, KeyLimits(tpm=2**40), ADMIN)
    assert caught.value.param == "tpm"


async def test_refused_key_requests_leave_no_audit_event(admin: AdminService) -> None:
    with pytest.raises(InvalidRequest):
        await admin.create_key("  ", ADMIN)
    with pytest.raises(NotFound):
        await admin.revoke_key(42, ADMIN)
    assert await admin.audit(10) == []


async def test_usage_export_is_audited_and_group_by_is_checked(admin: AdminService) -> None:
    assert await admin.usage(["key", "day"], ADMIN, format="csv") == []
    (event,) = await admin.audit(10, "usage.export")
    assert event["details"] == {"group_by": ["key", "day"], "format": "csv"}
    for bad in (["key", "key"], ["tenant"]):
        with pytest.raises(InvalidRequest) as caught:
            await admin.usage(bad, ADMIN)
        assert caught.value.param == "group_by"


async def test_usage_includes_requests_that_just_ended(tmp_path: Path) -> None:
    store = build_store(load_settings({"data_dir": str(tmp_path)}, env={}))
    async with AsyncExitStack() as stack:
        await open_store(store, stack)
        record = RequestRecord("req_1", model="m", deployment="m")
        record.prompt_tokens, record.completion_tokens = 3, 4
        store.writer.put(usage_entry(record, "/v1/chat/completions", 200))  # queued only
        rows = await store.admin.usage(["model"], CLI, since=datetime(2000, 1, 1, tzinfo=UTC))
    assert rows == [
        {"model": "m", "requests": 1, "prompt_tokens": 3, "completion_tokens": 4,
         "cancelled": 0, "errors": 0}
    ]  # fmt: skip


@pytest.mark.parametrize("limit", [0, 10_001])
async def test_audit_limit_is_checked(admin: AdminService, limit: int) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await admin.audit(limit)
    assert caught.value.param == "limit"
