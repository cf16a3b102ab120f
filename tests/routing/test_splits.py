"""Weighted A/B splits: proportions over 1,000 routed requests, stickiness per user and per
key, and the arm recorded in usage and metrics."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import httpx

from qwen_gateway.routing.registry import RouteContext, Split
from routing.helpers import routed, scripted
from support.flaky import FlakyEngine
from support.metrics import sample

DEPLOYMENTS = [{"name": "stable"}, {"name": "canary"}]


async def _models(http: httpx.AsyncClient, n: int, **body: object) -> list[str]:
    async def one(i: int) -> str:
        r = await http.post("/v1/chat/completions", json={
            "model": "qwen", "messages": [{"role": "user", "content": f"Hi {i}"}],
            "max_tokens": 2, **body})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.headers["x-qwen-gateway-route"].startswith("split=qwen:")
        return str(r.json()["model"])

    out: list[str] = []
    for start in range(0, n, 50):
        out += await asyncio.gather(*(one(i) for i in range(start, min(n, start + 50))))
    return out


async def test_a_90_10_split_holds_over_1000_requests(tmp_path: Path) -> None:
    routing = {"splits": {"qwen": {"arms": {"stable": 90, "canary": 10}}}}
    async with routed(tmp_path, DEPLOYMENTS, routing=routing) as g:
        counts = Counter(await _models(g.http, 1000))
        # binomial(1000, 0.1): mean 100, standard deviation 9.5; this is ±5 deviations
        assert set(counts) == {"stable", "canary"}
        assert 52 <= counts["canary"] <= 148, counts
        metrics = (await g.http.get("/metrics")).text
        for arm in ("stable", "canary"):
            assert sample(metrics, "qwen_gateway_route_split_total", model="qwen",
                          arm=arm) == counts[arm]  # fmt: skip
        await g.container.store.writer.flush()
        rows = await g.container.store.usage.report(["model", "arm", "deployment"])
        assert {(r["model"], r["arm"], r["deployment"]): r["requests"] for r in rows} == {
            ("qwen", "stable", "stable"): counts["stable"],
            ("qwen", "canary", "canary"): counts["canary"],
        }  # fmt: skip
        usage = await g.http.get("/admin/usage", params={"group_by": "deployment"})
        assert {r["deployment"]: r["requests"] for r in usage.json()["data"]} == counts


async def test_sticky_splits_keep_each_user_on_one_arm(tmp_path: Path) -> None:
    routing = {"splits": {"qwen": {"arms": {"stable": 50, "canary": 50}, "sticky": "user"}}}
    async with routed(tmp_path, DEPLOYMENTS, routing=routing) as g:
        arms = {}
        for u in range(40):
            seen = set(await _models(g.http, 5, user=f"user-{u}"))
            assert len(seen) == 1, (u, seen)
            arms[u] = seen.pop()
        assert 8 <= sum(a == "canary" for a in arms.values()) <= 32  # users spread over both
        # without a user, the caller (here: anonymous) is the sticky key
        assert len(set(await _models(g.http, 20))) == 1


async def test_usage_keeps_the_arm_when_its_fallback_answers(tmp_path: Path) -> None:
    deployments = [{"name": "stable"}, {"name": "canary", "fallbacks": ["stable"]}]
    canary = FlakyEngine(scripted("canary"), broken=True)
    routing = {"splits": {"qwen": {"arms": {"stable": 1, "canary": 1}}}}
    async with routed(tmp_path, deployments, {"canary": canary}, routing=routing) as g:
        answered = Counter(await _models(g.http, 40))
        assert set(answered) == {"stable"}  # every canary request fell back
        await g.container.store.writer.flush()
        usage = await g.http.get("/admin/usage", params={"group_by": "arm,deployment"})
        rows = {(r["arm"], r["deployment"]): r["requests"] for r in usage.json()["data"]}
        assert set(rows) == {("stable", "stable"), ("canary", "stable")}
        # tried until its breaker opened (5 failures), then passed over at once
        assert rows[("canary", "stable")] >= canary.attempts == 5
        assert sum(rows.values()) == 40


def test_a_split_sticky_per_key_follows_the_caller() -> None:
    split = Split("qwen", (("stable", 1.0), ("canary", 1.0)), sticky="key")
    rng = random.Random(7)
    arms = {}
    for k in range(40):
        picks = {split.pick(RouteContext(caller=f"key:{k}", user=f"u{n}"), rng) for n in range(5)}
        assert len(picks) == 1  # the user field does not matter, the key does
        arms[k] = picks.pop()
    assert 8 <= sum(a == "canary" for a in arms.values()) <= 32
    unsticky = Split("qwen", (("stable", 1.0), ("canary", 1.0)))
    assert len({unsticky.pick(RouteContext(caller="key:1"), rng) for _ in range(50)}) == 2
