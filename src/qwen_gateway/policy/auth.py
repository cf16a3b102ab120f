"""Authentication: ``Authorization: Bearer`` with an API key, a JWT or the static key.

Keys in the query string are refused. Failures are audited (client address and reason, never
the credential). The credential is checked first: a valid one is always accepted, and only the
failures of an address that keeps failing are answered with 429s.
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
    """Counts authentication failures per client address over a sliding minute.

    Only failures are counted and only failures are refused: a valid credential always gets
    through. The table holds at most ``max_clients`` addresses; past that, the address whose
    last failure is the oldest is dropped (not the whole table).
    """

    def __init__(
        self,
        limit: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 100_000,
    ) -> None:
        self._limit = limit
        self._clock = clock
        self._max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}  # least recently failed first

    def fail(self, client: str) -> None:
        """Count a failure, or raise ``RateLimited`` if the address already failed too often."""
        times = self._failures.pop(client, None) or deque()
        cutoff = self._clock() - 60
        while times and times[0] <= cutoff:
            times.popleft()
        self._failures[client] = times  # now the most recent entry
        if len(times) >= self._limit:
            wait = max(1, int(times[0] + 60 - self._clock() + 1))
            raise RateLimited(
                "Too many failed authentication attempts from your address; retry later.",
                code="too_many_auth_failures",
                headers={"Retry-After": str(wait)},
            )
        times.append(self._clock())
        while len(self._failures) > self._max_clients:
            del self._failures[next(iter(self._failures))]


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
        try:
            if query_keys & QUERY_CREDENTIALS:
                raise AuthenticationFailed(
                    "Credentials in the URL are refused (they end up in logs). Send "
                    "'Authorization: Bearer <key>' instead.",
                    code="credentials_in_query",
                )
            return await self._check(authorization or "")
        except AuthenticationFailed as exc:
            self._throttle.fail(client)  # 429 instead, once the address failed too often
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
