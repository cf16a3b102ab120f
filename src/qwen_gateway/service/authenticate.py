"""The authenticate stage, first in the pipeline: who is calling (an API key, a JWT, the
static key, or anonymous when authentication is off), noted on the request record."""

from __future__ import annotations

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.policy.auth import Authenticator, require_admin
from qwen_gateway.policy.principal import Principal


class Authenticate:
    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def __call__(
        self,
        record: RequestRecord,
        authorization: str | None,
        query_keys: set[str],
        client: str,
        path: str,
        *,
        admin: bool = False,
    ) -> Principal:
        """The caller of a request (raises 401/403); ``admin``: an admin is required."""
        principal = await self._authenticator.authenticate(authorization, query_keys, client, path)
        if admin:
            require_admin(principal)
        record.principal = principal
        return principal
