"""The review queue over HTTP: the client's ``GET /v1/reviews/{id}`` through the openai SDK
(only the key that made the request; pending 202, approved with the answer, others 404) and
the admin routes (list, show, approve, reject; admins only), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from qwen_gateway.safety.crypto import generate_key
from qwen_gateway.service.reviews import ReviewService
from support.fixtures import InProcess
from tenancy.helpers import admin_key, client, secured

SAFETY = {"safety": {"review": {"encryption_key": generate_key()}}}
ANSWER = "Take 4 g of paracetamol at once. 一次服用4克。"


async def key_with_id(g: InProcess, admin: dict[str, str]) -> tuple[str, int]:
    resp = await g.http.post("/admin/keys", json={"name": "client"}, headers=admin)
    assert resp.status_code == 201, resp.text
    return resp.json()["key"], resp.json()["id"]


async def held(g: InProcess, key_id: int, category: str = "medical") -> str:
    reviews = g.container.services.reviews
    assert isinstance(reviews, ReviewService)
    return await reviews.submit(
        mode="hold", direction="output", category=category, principal_id=f"key:{key_id}",
        key_id=key_id, deployment="scripted", request_id="req_7", prompt="How much?",
        answer=ANSWER,
    )  # fmt: skip


async def fetch(sdk: openai.AsyncOpenAI, review_id: str) -> httpx.Response:
    return await sdk.get(f"/reviews/{review_id}", cast_to=httpx.Response)


async def test_a_held_answer_reaches_its_key_after_an_admin_approves(
    tmp_path: Path, database_url: str
) -> None:
    async with secured(tmp_path, database_url, **SAFETY) as g:
        admin = {"Authorization": f"Bearer {await admin_key(g)}"}
        (mine, my_id), (theirs, _) = await key_with_id(g, admin), await key_with_id(g, admin)
        review_id = await held(g, my_id)
        me, them = client(g, mine), client(g, theirs)

        pending = await fetch(me, review_id)
        assert pending.status_code == 202
        assert pending.json() == {
            "id": review_id,
            "object": "review",
            "status": "pending",
            "category": "medical",
            "created": pending.json()["created"],
            "message": None,
        }
        with pytest.raises(openai.NotFoundError) as other:
            await fetch(them, review_id)
        assert other.value.body["code"] == "not_found"  # type: ignore[index]
        assert ANSWER not in other.value.response.text

        listed = await g.http.get(f"/admin/reviews?status=pending&key_id={my_id}", headers=admin)
        assert [r["id"] for r in listed.json()["data"]] == [review_id]
        assert "answer" not in listed.json()["data"][0]
        shown = (await g.http.get(f"/admin/reviews/{review_id}", headers=admin)).json()
        assert (shown["answer"], shown["prompt"], shown["mode"]) == (ANSWER, "How much?", "hold")

        approved = await g.http.post(
            f"/admin/reviews/{review_id}/approve", json={"reason": "dose checked"}, headers=admin
        )
        assert approved.status_code == 200, approved.text
        assert (approved.json()["status"], approved.json()["reason"]) == (
            "approved",
            "dose checked",
        )

        released = await fetch(me, review_id)
        assert released.status_code == 200
        assert released.json()["message"] == {"role": "assistant", "content": ANSWER}
        with pytest.raises(openai.NotFoundError):
            await fetch(them, review_id)

        audit = await g.http.get("/admin/audit?action=review.approve", headers=admin)
        (event,) = [e for e in audit.json()["data"] if e["target"] == review_id]
        assert event["actor"].startswith("key:") and event["ts"]
        assert ANSWER not in audit.text


async def test_rejection_and_the_admin_routes_errors(tmp_path: Path) -> None:
    async with secured(tmp_path, **SAFETY) as g:
        admin = {"Authorization": f"Bearer {await admin_key(g)}"}
        mine, my_id = await key_with_id(g, admin)
        review_id = await held(g, my_id, "finance")
        bad_body = await g.http.post(
            f"/admin/reviews/{review_id}/reject", json={"why": "x"}, headers=admin
        )
        assert bad_body.status_code == 400
        rejected = await g.http.post(
            f"/admin/reviews/{review_id}/reject", json={"reason": "unsafe"}, headers=admin
        )
        assert rejected.json()["status"] == "rejected"
        result = await fetch(client(g, mine), review_id)
        assert (result.status_code, result.json()["status"], result.json()["message"]) == (
            200,
            "rejected",
            None,
        )
        again = await g.http.post(f"/admin/reviews/{review_id}/approve", headers=admin)
        assert again.status_code == 400
        assert again.json()["error"]["code"] == "review_already_decided"
        missing = await g.http.post("/admin/reviews/rev_nothing/approve", headers=admin)
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "invalid_request_error"
        wrong = await g.http.get("/admin/reviews?status=held", headers=admin)
        assert (wrong.status_code, wrong.json()["error"]["param"]) == (400, "status")


async def test_the_admin_review_routes_refuse_a_non_admin_key(tmp_path: Path) -> None:
    async with secured(tmp_path, **SAFETY) as g:
        admin = {"Authorization": f"Bearer {await admin_key(g)}"}
        key, key_id = await key_with_id(g, admin)
        review_id = await held(g, key_id)
        user = {"Authorization": f"Bearer {key}"}
        calls: list[tuple[str, str, Any]] = [
            ("GET", "/admin/reviews", None),
            ("GET", f"/admin/reviews/{review_id}", None),
            ("POST", f"/admin/reviews/{review_id}/approve", {}),
            ("POST", f"/admin/reviews/{review_id}/reject", {}),
        ]
        for method, path, body in calls:
            resp = await g.http.request(method, path, json=body, headers=user)
            assert resp.status_code == 403, path
            assert resp.json()["error"]["type"] == "permission_error"
            assert ANSWER not in resp.text
        unauthenticated = await g.http.get(f"/v1/reviews/{review_id}")
        assert unauthenticated.status_code == 401
        assert (await fetch(client(g, key), review_id)).json()["status"] == "pending"


async def test_without_a_safety_section_there_are_no_review_routes(tmp_path: Path) -> None:
    async with secured(tmp_path) as g:
        admin = {"Authorization": f"Bearer {await admin_key(g)}"}
        key, _ = await key_with_id(g, admin)
        with pytest.raises(openai.NotFoundError):
            await fetch(client(g, key), "rev_0")
        assert (await g.http.get("/admin/reviews", headers=admin)).status_code == 404
