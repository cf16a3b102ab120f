"""The authenticate stage notes the caller on the record; admin routes refuse other callers."""

from __future__ import annotations

import pytest

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.errors import AuthenticationFailed, PermissionDenied
from qwen_gateway.policy.auth import Authenticator, FailureThrottle
from qwen_gateway.policy.principal import ANONYMOUS
from qwen_gateway.service.authenticate import Authenticate
from qwen_gateway.store.audit import AuditEntry

STATIC = "s3cret-static-key"


def _stage(enabled: bool, audit: list[AuditEntry] | None = None) -> Authenticate:
    return Authenticate(
        Authenticator(
            enabled=enabled,
            keys=None,
            jwt=None,
            static_key=STATIC if enabled else None,
            audit=(audit if audit is not None else []).append,
            throttle=FailureThrottle(100),
        )
    )


async def test_with_authentication_off_the_caller_is_anonymous() -> None:
    record = RequestRecord("r")
    principal = await _stage(False)(record, None, set(), "127.0.0.1", "/v1/models")
    assert principal is ANONYMOUS
    assert record.principal is ANONYMOUS


async def test_the_static_key_is_the_static_principal_and_not_an_admin() -> None:
    record = RequestRecord("r")
    stage = _stage(True)
    principal = await stage(record, f"Bearer {STATIC}", set(), "127.0.0.1", "/v1/models")
    assert record.principal is principal
    other = RequestRecord("r2")
    with pytest.raises(PermissionDenied):
        await stage(other, f"Bearer {STATIC}", set(), "127.0.0.1", "/admin/keys", admin=True)
    assert other.principal is None  # refused callers are not noted


async def test_a_wrong_key_is_refused_and_audited() -> None:
    audit: list[AuditEntry] = []
    record = RequestRecord("r")
    with pytest.raises(AuthenticationFailed):
        await _stage(True, audit)(record, "Bearer wrong", set(), "10.0.0.1", "/v1/models")
    assert record.principal is None
    assert [e.action for e in audit] == ["auth.failure"]
