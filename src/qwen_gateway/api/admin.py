"""The admin API under /admin: keys, usage reports, the audit trail. Admin credentials only."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field, ValidationError

from qwen_gateway.container import Container
from qwen_gateway.core.limits import KeyLimits
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.errors import InvalidRequest
from qwen_gateway.policy.keys import key_view
from qwen_gateway.policy.principal import Principal
from qwen_gateway.store.audit import AuditEntry


class KeyCreate(KeyLimits):
    """The body of ``POST /admin/keys``: the key's limits (flat) and its other fields."""

    name: str = Field(min_length=1, max_length=200)
    role: Literal["inference", "admin"] = "inference"
    models: list[str] | None = Field(default=None, max_length=1000)
    expires_at: datetime | None = None


def _caller(request: Request) -> tuple[str, str]:
    record = request.scope.get("state", {}).get("record")
    principal = record.principal if isinstance(record, RequestRecord) else None
    actor = principal.id if isinstance(principal, Principal) else "anonymous"
    client = request.client.host if request.client is not None else "unknown"
    return actor, client


def _csv_cell(value: Any) -> Any:
    """Spreadsheets run cells that start with = + - @ as formulas: neutralise them."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def admin_router(container: Container, check: Any) -> APIRouter:
    router = APIRouter(prefix="/admin", dependencies=[Depends(check)])
    keys = container.keys

    @router.post("/keys", status_code=201)
    async def create_key(request: Request) -> JSONResponse:
        try:
            body = KeyCreate.model_validate_json(await request.body())
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            raise InvalidRequest(f"Invalid key request: {err['msg']}.", param=param) from None
        actor, client = _caller(request)
        secret, record = await keys.create(
            body.name,
            role=body.role,
            models=tuple(body.models) if body.models is not None else None,
            limits=KeyLimits.model_validate(body.model_dump(include=set(KeyLimits.model_fields))),
            expires_at=body.expires_at,
            actor=actor,
            client=client,
        )
        return JSONResponse({"key": secret, **key_view(record)}, status_code=201)

    @router.get("/keys")
    async def list_keys() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [key_view(r) for r in await keys.list()]})

    @router.get("/keys/{key_id}")
    async def show_key(key_id: int) -> JSONResponse:
        return JSONResponse(key_view(await keys.get(key_id)))

    @router.post("/keys/{key_id}/revoke")
    async def revoke_key(key_id: int, request: Request) -> JSONResponse:
        actor, client = _caller(request)
        return JSONResponse(key_view(await keys.revoke(key_id, actor, client)))

    @router.post("/keys/{key_id}/rotate")
    async def rotate_key(key_id: int, request: Request) -> JSONResponse:
        actor, client = _caller(request)
        secret, record = await keys.rotate(key_id, actor, client)
        return JSONResponse({"key": secret, **key_view(record)})

    @router.get("/usage")
    async def usage(
        request: Request,
        group_by: str = "key,model,day",
        since: datetime | None = None,
        until: datetime | None = None,
        format: Literal["json", "csv"] = "json",
    ) -> Response:
        groups = [g.strip() for g in group_by.split(",") if g.strip()]
        known = ("key", "model", "deployment", "arm", "day")
        if any(g not in known for g in groups) or len(set(groups)) != len(groups):
            raise InvalidRequest(
                "group_by takes a comma-separated subset of key, model, deployment, arm, day.",
                param="group_by",
            )
        await container.writer.flush()  # include requests that just ended
        rows = await container.usage.report(groups, since, until)  # type: ignore[arg-type]
        actor, client = _caller(request)
        container.writer.put(
            AuditEntry(datetime.now(UTC), "usage.export", actor, None, client,
                       {"group_by": groups, "format": format})
        )  # fmt: skip
        if format == "json":
            return JSONResponse({"object": "list", "group_by": groups, "data": rows})
        out = io.StringIO()
        columns = [*groups, "requests", "prompt_tokens", "completion_tokens", "cancelled", "errors"]
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8")

    @router.get("/audit")
    async def audit(limit: int = 100, action: str | None = None) -> JSONResponse:
        if not 1 <= limit <= 10_000:
            raise InvalidRequest("limit must be between 1 and 10000.", param="limit")
        await container.writer.flush()
        return JSONResponse({"object": "list", "data": await container.audit.recent(limit, action)})

    return router
