"""The admin API under /admin: keys, usage reports, the audit trail, over the admin service;
the console's live stats and effective configuration, over the console service. Admin
credentials only."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError

from qwen_gateway.core.limits import KeyLimits
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.errors import InvalidRequest
from qwen_gateway.policy.keys import key_view
from qwen_gateway.policy.principal import Principal
from qwen_gateway.service.admin import USAGE_COLUMNS, Actor, AdminService
from qwen_gateway.service.console import ConsoleService


class KeyCreate(KeyLimits):
    """The body of ``POST /admin/keys``: the key's limits (flat) and its other fields."""

    name: str = Field(min_length=1, max_length=200)
    role: Literal["inference", "admin"] = "inference"
    models: list[str] | None = Field(default=None, max_length=1000)
    expires_at: datetime | None = None


B = TypeVar("B", bound=BaseModel)


async def body_of(request: Request, model: type[B], what: str) -> B:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise InvalidRequest(f"Invalid {what}: {err['msg']}.", param=param) from None


def caller_of(request: Request) -> Actor:
    record = request.scope.get("state", {}).get("record")
    principal = record.principal if isinstance(record, RequestRecord) else None
    actor = principal.id if isinstance(principal, Principal) else "anonymous"
    client = request.client.host if request.client is not None else "unknown"
    return Actor(actor, client)


def _csv_cell(value: Any) -> Any:
    """Spreadsheets run cells that start with = + - @ as formulas: neutralise them."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def admin_router(
    admin: AdminService, check: Any, console: ConsoleService | None = None
) -> APIRouter:
    router = APIRouter(prefix="/admin", dependencies=[Depends(check)])

    @router.post("/keys", status_code=201)
    async def create_key(request: Request) -> JSONResponse:
        body = await body_of(request, KeyCreate, "key request")
        secret, record = await admin.create_key(
            body.name,
            caller_of(request),
            role=body.role,
            models=tuple(body.models) if body.models is not None else None,
            limits=KeyLimits.model_validate(body.model_dump(include=set(KeyLimits.model_fields))),
            expires_at=body.expires_at,
        )
        return JSONResponse({"key": secret, **key_view(record)}, status_code=201)

    @router.get("/keys")
    async def list_keys() -> JSONResponse:
        return JSONResponse(
            {"object": "list", "data": [key_view(r) for r in await admin.list_keys()]}
        )

    @router.get("/keys/{key_id}")
    async def show_key(key_id: int) -> JSONResponse:
        return JSONResponse(key_view(await admin.key(key_id)))

    @router.patch("/keys/{key_id}")
    async def update_key(key_id: int, request: Request) -> JSONResponse:
        # the limits sent replace the key's (null: no limit of that kind), the others stay
        body = await body_of(request, KeyLimits, "limits")
        current = await admin.key(key_id)
        limits = current.limits.model_copy(
            update={f: getattr(body, f) for f in body.model_fields_set}
        )
        return JSONResponse(key_view(await admin.update_limits(key_id, limits, caller_of(request))))

    @router.post("/keys/{key_id}/revoke")
    async def revoke_key(key_id: int, request: Request) -> JSONResponse:
        return JSONResponse(key_view(await admin.revoke_key(key_id, caller_of(request))))

    @router.post("/keys/{key_id}/rotate")
    async def rotate_key(key_id: int, request: Request) -> JSONResponse:
        secret, record = await admin.rotate_key(key_id, caller_of(request))
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
        rows = await admin.usage(
            groups, caller_of(request), since=since, until=until, format=format
        )
        if format == "json":
            return JSONResponse({"object": "list", "group_by": groups, "data": rows})
        out = io.StringIO()
        columns = [*groups, *USAGE_COLUMNS]
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8")

    @router.get("/audit")
    async def audit(limit: int = 100, action: str | None = None) -> JSONResponse:
        return JSONResponse({"object": "list", "data": await admin.audit(limit, action)})

    if console is not None:

        @router.get("/stats")
        async def stats() -> JSONResponse:
            return JSONResponse(console.stats())

        @router.get("/config")
        async def config(request: Request) -> JSONResponse:
            return JSONResponse(console.config(caller_of(request)))

    return router
