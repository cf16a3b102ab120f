"""Authentication: ``Authorization: Bearer`` with an API key, a JWT or the static key.

Keys in the query string are refused. Failures are audited (client address and reason, never
the credential) and an address that keeps failing is slowed down with 429s.
"""

from __future__ import annotations

import hmac
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from qwen_gateway.errors import AuthenticationFailed, PermissionDenied, RateLimited
from qwen_gateway.policy.jwt import JWTVerifier
from qwen_gateway.policy.keys import KeyManager, looks_like_key, principal_of
from qwen_gateway.policy.principal import ANONYMOUS, Principal
from qwen_gateway.store.audit import AuditEntry

QUERY_CREDENTIALS = frozenset({"api_key", "api-key", "apikey", "key", "access_token", "token"})


class FailureThrottle:
    """Counts authentication failures per client address over a sliding minute."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        times = self._failures.setdefault(client, deque())
        cutoff = self._clock() - 60
        while times and times[0] <= cutoff:
            times.popleft()
        return times

    def check(self, client: str) -> None:
        if client not in self._failures:
            return
        times = self._recent(client)
        if not times:
            del self._failures[client]
        elif len(times) >= self._limit:
            wait = max(1, int(times[0] + 60 - self._clock() + 1))
            raise RateLimited(
                "Too many failed authentication attempts from your address; retry later.",
                code="too_many_auth_failures",
                headers={"Retry-After": str(wait)},
            )

    def fail(self, client: str) -> None:
        if len(self._failures) > 100_000:
            self._failures.clear()
        self._recent(client).append(self._clock())


class Authenticator:
    def __init__(
        self,
        *,
        enabled: bool,
        keys: KeyManager | None,
        jwt: JWTVerifier | None,
        static_key: str | None,
        audit: Callable[[AuditEntry], None],
        throttle: FailureThrottle,
    ) -> None:
        self.enabled = enabled or static_key is not None
        self._keys = keys
        self._jwt = jwt
        self._static = static_key.encode() if static_key else None
        self._audit = audit
        self._throttle = throttle

    async def authenticate(
        self, authorization: str | None, query_keys: set[str], client: str, path: str
    ) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        self._throttle.check(client)
        try:
            if query_keys & QUERY_CREDENTIALS:
                raise AuthenticationFailed(
                    "Credentials in the URL are refused (they end up in logs). Send "
                    "'Authorization: Bearer <key>' instead.",
                    code="credentials_in_query",
                )
            return await self._check(authorization or "")
        except AuthenticationFailed as exc:
            self._throttle.fail(client)
            self._audit(
                AuditEntry(datetime.now(UTC), "auth.failure", "anonymous", None, client[:100],
                           {"reason": exc.code, "path": path[:200]})
            )  # fmt: skip
            raise

    async def _check(self, header: str) -> Principal:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        if len(token) > 8192:
            raise AuthenticationFailed("The credential is too long.", code="invalid_api_key")
        if self._static is not None and hmac.compare_digest(token.encode(), self._static):
            return Principal("static")
        if looks_like_key(token) and self._keys is not None:
            record = await self._keys.lookup(token)
            if record is not None:
                return principal_of(record)
        elif token.count(".") == 2 and self._jwt is not None:
            return self._jwt.principal(token)
        raise AuthenticationFailed(
            "Incorrect API key provided (unknown, revoked or expired).", code="invalid_api_key"
        )


def require_admin(principal: Principal) -> None:
    if principal.role != "admin":
        raise PermissionDenied(
            "This endpoint needs an admin credential; inference keys cannot use it.",
            code="admin_required",
        )


def check_model(principal: Principal, model: str) -> None:
    if not principal.allows(model):
        raise PermissionDenied(
            f"Your credential is not allowed to use the model '{model}'.",
            param="model",
            code="model_not_allowed",
        )
