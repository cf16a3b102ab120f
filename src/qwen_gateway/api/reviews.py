"""The review queue's routes: the client's ``GET /v1/reviews/{id}`` (the key that made the
request fetches its held answer once approved) and the reviewers' ``/admin/reviews`` (list,
show, approve, reject), over the review service."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from qwen_gateway.api.admin import body_of, caller_of
from qwen_gateway.policy.principal import Principal
from qwen_gateway.service.reviews import ReviewService


class Decision(BaseModel):
    """The body of ``POST /admin/reviews/{id}/approve`` and ``.../reject`` (may be empty)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=1000)


def client_review_router(reviews: ReviewService, check: Any, principal: Any) -> APIRouter:
    """``check`` authenticates the request (any key); ``principal(request)`` is then the
    caller. Pending: 202; decided: 200; someone else's item or none: 404 alike."""
    router = APIRouter(prefix="/v1")

    @router.get("/reviews/{review_id}")
    async def fetch_review(review_id: str, request: Request) -> JSONResponse:
        await check(request)
        caller = principal(request)
        caller_id = caller.id if isinstance(caller, Principal) else "anonymous"
        result = await reviews.fetch_for(review_id, caller_id)
        return JSONResponse(result.view(), status_code=202 if result.status == "pending" else 200)

    return router


def admin_review_router(reviews: ReviewService, check: Any) -> APIRouter:
    router = APIRouter(prefix="/admin/reviews", dependencies=[Depends(check)])

    @router.get("")
    async def list_reviews(
        status: str | None = None,
        category: str | None = None,
        key_id: int | None = None,
        limit: int = 100,
    ) -> JSONResponse:
        items = await reviews.list(status, category, key_id, limit)
        return JSONResponse({"object": "list", "data": [i.view() for i in items]})

    @router.get("/{review_id}")
    async def show_review(review_id: str, request: Request) -> JSONResponse:
        item = await reviews.show(review_id, caller_of(request))
        return JSONResponse(item.view(content=True))

    async def decide(review_id: str, request: Request, approve: bool) -> JSONResponse:
        raw = await request.body()
        body = await body_of(request, Decision, "decision") if raw.strip() else Decision()
        item = await reviews.decide(review_id, approve, caller_of(request), body.reason)
        return JSONResponse(item.view())

    @router.post("/{review_id}/approve")
    async def approve(review_id: str, request: Request) -> JSONResponse:
        return await decide(review_id, request, True)

    @router.post("/{review_id}/reject")
    async def reject(review_id: str, request: Request) -> JSONResponse:
        return await decide(review_id, request, False)

    return router
