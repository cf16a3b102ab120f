"""``safety.review`` settings and how the container wires the review queue: nothing without a
``safety:`` section; with one, a key unless content is off, and the maintenance task."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest

from qwen_gateway.config import ConfigError, Settings, load_settings
from qwen_gateway.container import build
from qwen_gateway.safety.crypto import generate_key
from routing.helpers import scripted

KEY = generate_key()


def settings(tmp_path: Path, **tree: Any) -> Settings:
    return load_settings({"data_dir": str(tmp_path), "auth": {"enabled": False}, **tree}, env={})


def test_review_defaults_and_a_valid_key(tmp_path: Path) -> None:
    s = settings(tmp_path, safety={"review": {"encryption_key": KEY}})
    assert s.safety is not None
    review = s.safety.review
    assert (review.retention_days, review.store_content) == (30, True)
    assert "{review_id}" in review.notice
    assert review.encryption_key is not None and review.encryption_key.get_secret_value() == KEY
    assert KEY not in repr(s)


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-key",
        base64.urlsafe_b64encode(b"k" * 16).decode(),
        base64.b64encode(b"k" * 31).decode(),
    ],
)
def test_a_malformed_key_is_refused_without_showing_it(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, safety={"review": {"encryption_key": bad}})
    message = str(caught.value)
    assert "safety.review.encryption_key" in message and "keygen" in message
    assert bad not in message


def test_the_notice_must_name_the_review(tmp_path: Path) -> None:
    for notice in ("Held for review.", "Held: {review_id} {other}"):
        with pytest.raises(ConfigError) as caught:
            settings(tmp_path, safety={"review": {"encryption_key": KEY, "notice": notice}})
        assert "safety.review.notice" in str(caught.value)
    with pytest.raises(ConfigError):
        settings(tmp_path, safety={"review": {"encryption_key": KEY, "retention_days": 0}})


async def test_without_a_safety_section_there_is_no_review_queue(tmp_path: Path) -> None:
    async with build(settings(tmp_path), {"m": scripted("m")}) as services:
        assert services.reviews is None and services.store.reviews is None
        assert b"qwen_gateway_review" not in services.metrics.render()
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "review-maintenance"]


async def test_without_a_key_one_is_made_at_first_start_and_kept(tmp_path: Path) -> None:
    key_file = tmp_path / "review-key"
    async with build(settings(tmp_path, safety={}), {"m": scripted("m")}) as services:
        assert services.reviews is not None
        made = key_file.read_text().strip()
        assert len(base64.urlsafe_b64decode(made)) == 32
        assert key_file.stat().st_mode & 0o777 == 0o600
        review_id = await services.reviews.submit(
            mode="hold", direction="output", category="c", principal_id="p", key_id=None,
            deployment="m", request_id="r", prompt="q", answer="the answer",
        )  # fmt: skip
    async with build(settings(tmp_path, safety={}), {"m": scripted("m")}) as services:
        assert services.reviews is not None
        assert key_file.read_text().strip() == made  # the same key: old items still open
        item = await services.reviews.show(review_id)
        assert item.answer == "the answer"
    key_file.write_text("not a key\n")
    with pytest.raises(ConfigError) as caught:
        async with build(settings(tmp_path, safety={}), {"m": scripted("m")}):
            pass
    assert str(key_file) in str(caught.value) and "not a key" not in str(caught.value)
    metadata_only = settings(tmp_path, safety={"review": {"store_content": False}})
    async with build(metadata_only, {"m": scripted("m")}) as services:
        assert services.reviews is not None


async def test_with_safety_the_queue_is_served_and_maintained(tmp_path: Path) -> None:
    s = settings(tmp_path, safety={"review": {"encryption_key": KEY}})
    async with build(s, {"m": scripted("m")}) as services:
        reviews = services.reviews
        assert reviews is not None
        (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "review-maintenance"]
        assert not task.done()
        review_id = await reviews.submit(
            mode="hold", direction="output", category="medical", principal_id="anonymous",
            key_id=None, deployment="m", request_id="req_1", prompt="p", answer="a",
        )  # fmt: skip
        assert review_id in reviews.notice(review_id)
        await reviews.maintain_once()
        rendered = services.metrics.render().decode()
        assert "qwen_gateway_review_queue_depth 1.0" in rendered
    assert task.done()  # stopped with the services


def test_two_processes_making_the_review_key_at_once_agree(tmp_path: Path) -> None:
    from qwen_gateway.container import _create_private

    path = tmp_path / "data" / "review-key"
    assert _create_private(path, "first\n") is True
    assert _create_private(path, "second\n") is False  # the one that came second keeps out
    assert path.read_text() == "first\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["review-key"]  # no temporary left


async def test_the_review_commands_never_make_a_key(tmp_path: Path) -> None:
    from qwen_gateway.container import build_reviews

    with pytest.raises(ConfigError, match="No review key"):
        async with build_reviews(settings(tmp_path, safety={})):
            pass
    assert not (tmp_path / "review-key").exists()
