"""The content-safety stages through the API, with the openai SDK as the client.

The answers come from the scripted backend (engines/scripted.py), which streams a fixed reply
token by token through the real tokenizer, so a blocked phrase arrives split across tokens as
it would from a model.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from qwen_gateway.core.limits import KeyLimits
from qwen_gateway.engines.prompt import PromptEngine
from qwen_gateway.engines.scripted import ScriptedBackend
from qwen_gateway.policy.keys import key_view
from qwen_gateway.service.admin import Actor
from support.fixtures import InProcess, open_in_process

NAME = "scripted-qwen"
ASK = [{"role": "user", "content": "Tell me a story."}]
SAFETY: dict[str, Any] = {
    "rule_sets": {
        "blocklist": {"files": ["default"]},
        "soft": {"keywords": {"mild": ["darn it"], "secret": ["project bluebird"]}},
    },
    "policies": [
        {"name": "default", "rule_sets": ["blocklist"]},
        {
            "name": "soft",
            "rule_sets": ["soft"],
            "actions": {"mild": "flag", "secret": "redact"},
        },
    ],
}


@asynccontextmanager
async def gateway(
    reply: str, tmp_path: Path, safety: dict[str, Any] | None = None
) -> AsyncIterator[tuple[InProcess, ScriptedBackend]]:
    backend = ScriptedBackend(NAME, [reply])
    settings = load_settings(
        {"data_dir": str(tmp_path), "auth": {"enabled": False}, "safety": safety or SAFETY},
        env={},
    )
    container = Container(settings, engines={NAME: PromptEngine(backend)})
    async with open_in_process(container) as g:
        yield g, backend


async def audit_rows(g: InProcess, prefix: str = "safety.") -> list[dict[str, Any]]:
    await g.container.store.writer.flush()
    rows = await g.container.store.audit.recent(100)
    return [r for r in rows if str(r["action"]).startswith(prefix)]


def metric(g: InProcess, text: str) -> float:
    for line in g.container.services.metrics.render().decode().splitlines():
        if line.startswith(text + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_blocked_prompt_is_a_400_naming_the_category_and_never_reaches_the_engine(
    tmp_path: Path,
) -> None:
    async with gateway("fine", tmp_path) as (g, backend):
        with pytest.raises(openai.BadRequestError) as caught:
            await g.client.chat.completions.create(
                model=NAME, messages=[{"role": "user", "content": "教我 賭 博 的技巧"}]
            )
        err = caught.value
        assert err.status_code == 400
        body = err.body
        assert isinstance(body, dict)
        assert body["code"] == "content_filter" and body["type"] == "invalid_request_error"
        assert "gambling" in body["message"]
        assert "赌" not in body["message"] and "賭" not in body["message"]
        assert backend.requests == []  # nothing reached the engine
        rows = await audit_rows(g)
        assert [
            (r["action"], r["details"]["category"], r["details"]["direction"]) for r in rows
        ] == [("safety.block", "gambling", "input")]
        assert "賭" not in str(rows)
        assert (
            metric(
                g,
                'qwen_gateway_safety_actions_total{action="block",category="gambling",direction="input"}',
            )
            == 1.0
        )


async def test_legacy_completions_prompts_are_checked_too(tmp_path: Path) -> None:
    async with gateway("fine", tmp_path) as (g, backend):
        with pytest.raises(openai.BadRequestError):
            await g.client.completions.create(model=NAME, prompt="如何诈骗老人")
        assert backend.requests == []


async def test_a_redacted_prompt_reaches_the_engine_masked(tmp_path: Path) -> None:
    async with gateway("ok", tmp_path) as (g, backend):
        await g.client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "about Project Bluebird today"}]
        )
        prompt = backend.tokenizer.decode(backend.requests[-1])  # type: ignore[union-attr]
        assert "Bluebird" not in prompt and "about " in prompt and "today" in prompt
        assert "*" * len("Project Bluebird") in prompt


BLOCKED_REPLY = "Here is the plan. 我们来讨论赌博的技巧, and more text after it."


async def test_a_blocked_answer_stops_before_the_phrase_when_streamed(tmp_path: Path) -> None:
    async with gateway(BLOCKED_REPLY, tmp_path) as (g, _):
        stream = await g.client.chat.completions.create(model=NAME, messages=ASK, stream=True)
        text = ""
        reasons = []
        async for chunk in stream:
            for c in chunk.choices:
                text += c.delta.content or ""
                if c.finish_reason:
                    reasons.append(c.finish_reason)
        assert reasons == ["content_filter"]
        assert text == "Here is the plan. 我们来讨论"
        rows = await audit_rows(g)
        assert [(r["action"], r["details"]["direction"]) for r in rows] == [
            ("safety.block", "output")
        ]


async def test_a_blocked_answer_is_cut_the_same_way_when_not_streamed(tmp_path: Path) -> None:
    async with gateway(BLOCKED_REPLY, tmp_path) as (g, _):
        c = await g.client.chat.completions.create(model=NAME, messages=ASK)
        assert c.choices[0].finish_reason == "content_filter"
        assert c.choices[0].message.content == "Here is the plan. 我们来讨论"
        assert c.usage is not None and c.usage.completion_tokens > 0


async def test_a_redacted_answer_masks_the_span_and_goes_on(tmp_path: Path) -> None:
    reply = "The code name is PROJECT-BLUEBIRD, keep it quiet."
    async with gateway(reply, tmp_path) as (g, _):
        stream = await g.client.chat.completions.create(model=NAME, messages=ASK, stream=True)
        text = ""
        async for chunk in stream:
            for c in chunk.choices:
                text += c.delta.content or ""
                assert c.finish_reason in (None, "stop")
        assert text == "The code name is " + "*" * len("PROJECT-BLUEBIRD") + ", keep it quiet."
        plain = await g.client.chat.completions.create(model=NAME, messages=ASK)
        assert plain.choices[0].message.content == text


async def test_a_flagged_answer_is_delivered_and_recorded(tmp_path: Path) -> None:
    reply = "Well, darn it, that is fine."
    async with gateway(reply, tmp_path) as (g, _):
        c = await g.client.chat.completions.create(model=NAME, messages=ASK)
        assert c.choices[0].message.content == reply
        assert c.choices[0].finish_reason == "stop"
        rows = await audit_rows(g)
        assert [(r["action"], r["details"]["category"]) for r in rows] == [("safety.flag", "mild")]


async def test_no_safety_section_changes_nothing(tmp_path: Path) -> None:
    backend = ScriptedBackend(NAME, [BLOCKED_REPLY])
    settings = load_settings({"data_dir": str(tmp_path), "auth": {"enabled": False}}, env={})
    container = Container(settings, engines={NAME: PromptEngine(backend)})
    assert container.services.safety is None
    assert container.services.pipeline.stages == ()
    async with open_in_process(container) as g:
        c = await g.client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "赌博"}]
        )
        assert c.choices[0].message.content == BLOCKED_REPLY
        assert await audit_rows(g) == []


async def test_a_reload_swaps_the_policies_and_a_bad_one_keeps_the_old(tmp_path: Path) -> None:
    config: dict[str, Any] = {"rule_sets": {"x": {"keywords": {"pets": ["hamster"]}}},
                              "policies": [{"name": "a", "rule_sets": ["x"]}]}  # fmt: skip
    current = {"safety": config}

    def reload() -> Any:
        return load_settings(
            {"data_dir": str(tmp_path), "auth": {"enabled": False}, **current}, env={}
        )

    backend = ScriptedBackend(NAME, ["a gerbil and a hamster"])
    container = Container(reload(), engines={NAME: PromptEngine(backend)}, reload=reload)
    async with open_in_process(container) as g:
        c = await g.client.chat.completions.create(model=NAME, messages=ASK)
        assert c.choices[0].message.content == "a gerbil and a "
        config["rule_sets"]["x"]["keywords"]["pets"] = ["gerbil"]
        r = await g.http.post("/admin/safety/reload")
        assert r.status_code == 200, r.text
        assert r.json()["generation"] == 2
        c = await g.client.chat.completions.create(model=NAME, messages=ASK)
        assert c.choices[0].message.content == "a "
        config["policies"][0]["rule_sets"] = ["nope"]
        r = await g.http.post("/admin/safety/reload")
        assert r.status_code == 400 and "unknown rule set" in r.json()["error"]["message"]
        c = await g.client.chat.completions.create(model=NAME, messages=ASK)
        assert c.choices[0].message.content == "a "  # the old policies stay
        rows = await audit_rows(g, "safety.reload")
        assert sorted(r["details"]["result"] for r in rows) == ["error", "ok"]


async def test_policies_select_callers_by_key_tier(tmp_path: Path) -> None:
    """A key's tier (set with keys create/update) picks the policies; a JWT's comes from its
    tier claim (tests/policy)."""
    safety = {
        "rule_sets": {"x": {"keywords": {"pets": ["hamster"]}}},
        "policies": [{"name": "free", "rule_sets": ["x"], "tiers": ["free"]}],
    }
    backend = ScriptedBackend(NAME, ["a hamster"])
    settings = load_settings({"data_dir": str(tmp_path), "safety": safety}, env={})
    container = Container(settings, engines={NAME: PromptEngine(backend)})
    async with open_in_process(container) as g:
        admin = g.container.store.admin
        free, record = await admin.create_key("free", Actor("test"), limits=KeyLimits(tier="free"))
        paid, _ = await admin.create_key("paid", Actor("test"))
        assert key_view(record)["tier"] == "free"

        async def answer(key: str) -> str | None:
            c = await g.client.with_options(api_key=key).chat.completions.create(
                model=NAME, messages=ASK
            )
            return c.choices[0].message.content

        assert await answer(free) == "a "
        assert await answer(paid) == "a hamster"
        updated = await admin.update_limits(
            record.id, record.limits.model_copy(update={"tier": "gold"}), Actor("test")
        )
        assert updated.limits.tier == "gold"
        assert await answer(free) == "a hamster"


REVIEWED: dict[str, Any] = {
    "rule_sets": {"risky": {"keywords": {"finance": ["guaranteed returns"]}}},
    "policies": [{"name": "r", "rule_sets": ["risky"], "actions": {"finance": "review"},
                  "review": "hold"}],
}  # fmt: skip
RISKY = "Here is my advice: buy this fund for guaranteed returns of 30% a year."


async def review_of(g: InProcess, text: str) -> str:
    found = re.search(r"rev_[0-9a-f]+", text)
    assert found is not None, text
    return found.group(0)


async def test_hold_withholds_from_the_phrase_and_releases_the_answer_on_approval(
    tmp_path: Path,
) -> None:
    async with gateway(RISKY, tmp_path, REVIEWED) as (g, _):
        stream = await g.client.chat.completions.create(model=NAME, messages=ASK, stream=True)
        text, reasons = "", []
        async for chunk in stream:
            for c in chunk.choices:
                text += c.delta.content or ""
                reasons += [c.finish_reason] if c.finish_reason else []
        assert reasons == ["content_filter"]
        assert text.startswith("Here is my advice: buy this fund for ")
        assert "guaranteed" not in text and "30%" not in text
        review_id = await review_of(g, text)
        pending = await g.http.get(f"/v1/reviews/{review_id}")
        assert pending.status_code == 202 and pending.json()["message"] is None
        shown = (await g.http.get(f"/admin/reviews/{review_id}")).json()
        assert shown["answer"] == RISKY and shown["category"] == "finance"
        assert shown["mode"] == "hold"
        r = await g.http.post(f"/admin/reviews/{review_id}/approve", json={})
        assert r.status_code == 200, r.text
        released = await g.http.get(f"/v1/reviews/{review_id}")
        assert released.status_code == 200
        assert released.json()["message"]["content"] == RISKY
        rows = await audit_rows(g, "review.")
        assert [r["action"] for r in rows if r["action"] != "review.show"] == ["review.approve"]


async def test_a_prompt_that_asks_for_review_holds_the_whole_answer(tmp_path: Path) -> None:
    async with gateway("An answer about money.", tmp_path, REVIEWED) as (g, _):
        ask = [{"role": "user", "content": "Which fund has guaranteed returns?"}]
        c = await g.client.chat.completions.create(model=NAME, messages=ask)
        assert c.choices[0].finish_reason == "content_filter"
        content = c.choices[0].message.content or ""
        assert "money" not in content
        review_id = await review_of(g, content)
        shown = (await g.http.get(f"/admin/reviews/{review_id}")).json()
        assert shown["direction"] == "input" and shown["answer"] == "An answer about money."
        assert "guaranteed returns" in shown["prompt"]
        await g.http.post(f"/admin/reviews/{review_id}/reject", json={"reason": "no"})
        rejected = (await g.http.get(f"/v1/reviews/{review_id}")).json()
        assert rejected["status"] == "rejected" and rejected["message"] is None


async def test_deliver_and_review_delivers_and_queues(tmp_path: Path) -> None:
    section = {
        **REVIEWED,
        "policies": [{**REVIEWED["policies"][0], "review": "deliver_and_review"}],
    }
    async with gateway(RISKY, tmp_path, section) as (g, _):
        c = await g.client.chat.completions.create(model=NAME, messages=ASK)
        assert c.choices[0].message.content == RISKY
        assert c.choices[0].finish_reason == "stop"
        listed = (await g.http.get("/admin/reviews?status=pending")).json()["data"]
        assert [(r["mode"], r["category"]) for r in listed] == [("deliver_and_review", "finance")]


async def test_the_cache_keeps_what_the_output_policy_let_through(tmp_path: Path) -> None:
    """The cache sits between the policies: a redacted answer is cached redacted, a blocked
    or held one is not cached, and a prompt sent for review is never answered from it."""
    replies = ["The code name is project bluebird.", BLOCKED_REPLY, BLOCKED_REPLY, RISKY, RISKY]
    backend = ScriptedBackend(NAME, replies)
    safety = {**SAFETY, "rule_sets": {**SAFETY["rule_sets"], **REVIEWED["rule_sets"]},
              "policies": [*SAFETY["policies"], *REVIEWED["policies"]]}  # fmt: skip
    settings = load_settings(
        {"data_dir": str(tmp_path), "auth": {"enabled": False}, "safety": safety, "cache": {}},
        env={},
    )
    container = Container(settings, engines={NAME: PromptEngine(backend)})
    async with open_in_process(container) as g:

        async def ask(content: str) -> tuple[str, str, str]:
            r = await g.http.post(
                "/v1/chat/completions",
                json={"model": NAME, "temperature": 0,
                      "messages": [{"role": "user", "content": content}]},
            )  # fmt: skip
            choice = r.json()["choices"][0]
            return (
                choice["message"]["content"],
                choice["finish_reason"],
                r.headers["x-qwen-gateway-cache"],
            )

        redacted = "The code name is " + "*" * len("project bluebird") + "."
        assert await ask("one") == (redacted, "stop", "miss")
        assert await ask("one") == (redacted, "stop", "hit")
        cut = await ask("two")
        assert cut[1:] == ("content_filter", "miss")
        assert (await ask("two"))[2] == "miss"  # the blocked answer was not kept
        held = await ask("three")
        assert held[1:] == ("content_filter", "miss") and "rev_" in held[0]
        assert (await ask("three"))[2] == "miss"
        assert (await ask("guaranteed returns?"))[2] == "bypass"


async def test_a_reload_retires_the_answers_cached_under_the_old_policies(tmp_path: Path) -> None:
    config: dict[str, Any] = {"rule_sets": {"x": {"keywords": {"pets": ["hamster"]}}},
                              "policies": [{"name": "a", "rule_sets": ["x"],
                                            "actions": {"pets": "redact"}}]}  # fmt: skip

    def reload() -> Any:
        tree = {"data_dir": str(tmp_path), "auth": {"enabled": False}, "safety": config,
                "cache": {}}  # fmt: skip
        return load_settings(tree, env={})

    backend = ScriptedBackend(NAME, ["a gerbil and a hamster"])
    container = Container(reload(), engines={NAME: PromptEngine(backend)}, reload=reload)
    async with open_in_process(container) as g:

        async def ask() -> tuple[str, str]:
            body = {"model": NAME, "messages": ASK, "temperature": 0}
            r = await g.http.post("/v1/chat/completions", json=body)
            return r.json()["choices"][0]["message"]["content"], r.headers["x-qwen-gateway-cache"]

        await ask()
        assert await ask() == ("a gerbil and a *******", "hit")
        config["rule_sets"]["x"]["keywords"]["pets"] = ["gerbil"]
        assert (await g.http.post("/admin/safety/reload")).status_code == 200
        assert await ask() == ("a ****** and a hamster", "miss")  # answered again, newly
        assert await ask() == ("a ****** and a hamster", "hit")


NEUTRAL = (
    "The history of the Roman aqueducts is a story of engineering. Builders used gravity, "
    "arches and careful surveying to carry water across valleys for many miles. Some aqueducts "
    "remained in use for centuries, and their stone arches still stand in several European "
    "cities today. Travellers often visit them to admire the precise masonry and the gentle "
    "slope that kept the water moving. Historians study inscriptions on the arches to learn who "
    "paid for them and when they were built. "
)
ADVICE = (
    "My advice for you: move all of your retirement savings into this single tech stock today, "
    "borrow against your house to buy more shares, and do not keep any cash in the bank, "
    "because you are guaranteed to double your money within a year."
)
CLASSIFIED: dict[str, Any] = {
    "policies": [{"name": "risk", "actions": {"financial_advice": "review"}, "review": "hold"}]
}


async def streamed(g: InProcess, **body: Any) -> tuple[str, list[str]]:
    stream = await g.client.chat.completions.create(
        model=NAME, messages=body.pop("messages", ASK), stream=True, **body
    )
    text, reasons = "", []
    async for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            reasons += [c.finish_reason] if c.finish_reason else []
    return text, reasons


async def test_a_streamed_answer_goes_out_only_as_far_as_the_classifier_has_read(
    tmp_path: Path,
) -> None:
    async with gateway(NEUTRAL + ADVICE, tmp_path, CLASSIFIED) as (g, _):
        text, reasons = await streamed(g)
        assert reasons == ["content_filter"]
        assert "retirement" not in text and "guaranteed" not in text
        delivered, _, notice = text.partition("\n\n")
        assert NEUTRAL.startswith(delivered) and len(delivered) >= 300  # what was read, only
        review_id = await review_of(g, notice)
        item = (await g.http.get(f"/admin/reviews/{review_id}")).json()
        assert (item["category"], item["mode"], item["direction"]) == (
            "financial_advice",
            "hold",
            "output",
        )
        assert (
            await g.http.post(f"/admin/reviews/{review_id}/approve", json={})
        ).status_code == 200
        released = (await g.http.get(f"/v1/reviews/{review_id}")).json()
        assert released["message"]["content"] == NEUTRAL + ADVICE
    async with gateway(ADVICE, tmp_path / "short", CLASSIFIED) as (g, _):
        text, reasons = await streamed(g)  # shorter than a window: nothing goes out
        assert reasons == ["content_filter"] and "savings" not in text and "rev_" in text
        c = await g.client.chat.completions.create(model=NAME, messages=ASK)
        assert c.choices[0].finish_reason == "content_filter"
        assert "savings" not in (c.choices[0].message.content or "")


async def test_a_released_answer_is_still_cut_and_masked_as_delivery_would(
    tmp_path: Path,
) -> None:
    section = {**SAFETY, "rule_sets": {**SAFETY["rule_sets"], **REVIEWED["rule_sets"]},
               "policies": [*SAFETY["policies"], *REVIEWED["policies"]]}  # fmt: skip
    reply = "Project Bluebird offers guaranteed returns. Also 赌博 tips follow here."
    async with gateway(reply, tmp_path, section) as (g, _):
        c = await g.client.chat.completions.create(model=NAME, messages=ASK)
        review_id = await review_of(g, c.choices[0].message.content or "")
        await g.http.post(f"/admin/reviews/{review_id}/approve", json={})
        released = (await g.http.get(f"/v1/reviews/{review_id}")).json()["message"]["content"]
        assert released == "*" * len("Project Bluebird") + " offers guaranteed returns. Also "


async def test_prompts_the_policy_cannot_rewrite_are_refused_not_passed(tmp_path: Path) -> None:
    async with gateway("fine", tmp_path) as (g, backend):
        with pytest.raises(openai.BadRequestError) as ids:
            await g.client.completions.create(model=NAME, prompt=[100, 200, 300])
        assert ids.value.body["code"] == "token_prompt_not_allowed"  # type: ignore[index]
        tool = {"type": "function", "function": {"name": "helper",
                                                 "description": "explains 赌博 odds",
                                                 "parameters": {"type": "object"}}}  # fmt: skip
        with pytest.raises(openai.BadRequestError) as tools:
            await g.client.chat.completions.create(model=NAME, messages=ASK, tools=[tool])  # type: ignore[list-item]
        assert tools.value.body["code"] == "content_filter"  # type: ignore[index]
        masked = {"type": "function", "function": {"name": "f",
                                                   "description": "about project bluebird",
                                                   "parameters": {"type": "object"}}}  # fmt: skip
        with pytest.raises(openai.BadRequestError):  # a redaction cannot rewrite a tool
            await g.client.chat.completions.create(model=NAME, messages=ASK, tools=[masked])  # type: ignore[list-item]
        assert backend.requests == []


async def test_a_review_is_queued_even_when_the_client_leaves_early(tmp_path: Path) -> None:
    section = {
        **REVIEWED,
        "policies": [{**REVIEWED["policies"][0], "review": "deliver_and_review"}],
    }
    async with gateway(RISKY, tmp_path, section) as (g, _):
        stream = await g.client.chat.completions.create(model=NAME, messages=ASK, stream=True)
        async for _chunk in stream:
            break  # the client reads one chunk and goes
        await stream.close()
        output = next(s for s in g.container.services.pipeline.stages if s.slot == "output_policy")
        await asyncio.gather(*output._abandoned)  # type: ignore[attr-defined]
        listed = (await g.http.get("/admin/reviews?status=pending")).json()["data"]
        assert [(r["category"], r["mode"]) for r in listed] == [("finance", "deliver_and_review")]


async def test_a_reload_without_a_safety_section_keeps_the_policies(tmp_path: Path) -> None:
    current: dict[str, Any] = {"safety": SAFETY}

    def reload() -> Any:
        tree = {"data_dir": str(tmp_path), "auth": {"enabled": False}, **current}
        return load_settings(tree, env={})

    backend = ScriptedBackend(NAME, [BLOCKED_REPLY])
    container = Container(reload(), engines={NAME: PromptEngine(backend)}, reload=reload)
    async with open_in_process(container) as g:
        current.clear()
        r = await g.http.post("/admin/safety/reload")
        assert r.status_code == 400 and "no longer has a 'safety:' section" in r.text
        c = await g.client.chat.completions.create(model=NAME, messages=ASK)
        assert c.choices[0].finish_reason == "content_filter"


async def test_a_cached_answer_is_never_served_across_differing_output_policies(
    tmp_path: Path,
) -> None:
    """Shared scope: a caller whose tier's policy redacts never gets another's unredacted
    answer from the cache."""
    section = {"rule_sets": {"x": {"keywords": {"pets": ["hamster"]}}},
               "policies": [{"name": "kids", "rule_sets": ["x"], "tiers": ["kids"],
                             "actions": {"pets": "redact"}}]}  # fmt: skip
    backend = ScriptedBackend(NAME, ["a hamster"])
    tree = {"data_dir": str(tmp_path), "safety": section, "cache": {"scope": "shared"}}
    container = Container(load_settings(tree, env={}), engines={NAME: PromptEngine(backend)})
    async with open_in_process(container) as g:
        admin = g.container.store.admin
        adult, _ = await admin.create_key("adult", Actor("test"))
        kid, _ = await admin.create_key("kid", Actor("test"), limits=KeyLimits(tier="kids"))

        async def ask(key: str) -> tuple[str, str]:
            r = await g.http.post(
                "/v1/chat/completions",
                json={"model": NAME, "messages": ASK, "temperature": 0},
                headers={"Authorization": f"Bearer {key}"},
            )
            return r.json()["choices"][0]["message"]["content"], r.headers["x-qwen-gateway-cache"]

        assert await ask(adult) == ("a hamster", "miss")
        assert await ask(kid) == ("a *******", "miss")
        assert await ask(kid) == ("a *******", "hit")
        assert await ask(adult) == ("a hamster", "hit")
