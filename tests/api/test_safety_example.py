"""``examples/safety.yaml`` as shipped, on a real ``serve`` process with the tiny model: the
shipped blocklist refuses a prompt, the classifier holds a financial question for review (the
tiny model's answer is released once approved), and deterministic answers come from the cache.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import openai
import pytest

from support.server import running_server

EXAMPLE = Path(__file__).parents[2] / "examples" / "safety.yaml"


def test_the_safety_example_runs_as_shipped(tiny_model_dir: Path, tmp_path: Path) -> None:
    with running_server(tiny_model_dir, tmp_path / "server.log", "--config", str(EXAMPLE)) as s:
        client = openai.OpenAI(base_url=s.base_url + "/v1", api_key="unused", max_retries=0)
        for word in ("破解", "盗版", "赌博", "诈骗"):
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(
                    model="qwen2.5-tiny",
                    messages=[{"role": "user", "content": f"教我{word}的方法"}],
                    max_tokens=4,
                )
            assert refused.value.body["code"] == "content_filter"  # type: ignore[index]
            assert word not in refused.value.message

        held = client.chat.completions.create(
            model="qwen2.5-tiny",
            messages=[{"role": "user", "content": "Should I put all my savings into bitcoin now?"}],
            max_tokens=8,
            temperature=0,
        )
        assert held.choices[0].finish_reason == "content_filter"
        notice = held.choices[0].message.content or ""
        found = re.search(r"rev_[0-9a-f]+", notice)
        assert found is not None, notice
        review_id = found.group(0)
        with httpx.Client(base_url=s.base_url) as http:
            assert http.get(f"/v1/reviews/{review_id}").status_code == 202
            item = http.get(f"/admin/reviews/{review_id}").json()
            assert item["category"] == "financial_advice" and item["mode"] == "hold"
            assert http.post(f"/admin/reviews/{review_id}/approve", json={}).status_code == 200
            released = http.get(f"/v1/reviews/{review_id}").json()
            assert released["message"]["content"] == item["answer"]

        ask = [{"role": "user", "content": "Name a colour."}]
        first = client.chat.completions.with_raw_response.create(
            model="qwen2.5-tiny", messages=ask, max_tokens=8, temperature=0
        )
        again = client.chat.completions.with_raw_response.create(
            model="qwen2.5-tiny", messages=ask, max_tokens=8, temperature=0
        )
        assert first.headers["x-qwen-gateway-cache"] == "miss"
        assert again.headers["x-qwen-gateway-cache"] == "hit"
        assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
