"""``qwen-gateway reviews ...`` on the database a server uses: list, show, approve, reject,
purge, and keygen for the encryption key."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from qwen_gateway.cli.main import app
from qwen_gateway.config import load_settings
from qwen_gateway.container import build_admin, build_reviews
from qwen_gateway.safety.crypto import generate_key

ANSWER = "Borrow against your house and buy lottery tickets. 抵押房子买彩票。"


def config_file(tmp_path: Path, safety: bool = True) -> Path:
    tree: dict[str, object] = {"data_dir": str(tmp_path / "data")}
    if safety:
        tree["safety"] = {"review": {"encryption_key": generate_key()}}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def submit(config: Path, key_id: int) -> str:
    async def go() -> str:
        async with build_reviews(load_settings(config_file=config, env={})) as reviews:
            return await reviews.submit(
                mode="hold", direction="output", category="finance",
                principal_id=f"key:{key_id}", key_id=key_id, deployment="qwen",
                request_id="req_9", prompt="Any tips?", answer=ANSWER,
            )  # fmt: skip

    return asyncio.run(go())


def audit(config: Path) -> list[dict[str, object]]:
    async def go() -> list[dict[str, object]]:
        async with build_admin(load_settings(config_file=config, env={})) as admin:
            return await admin.audit(100)

    return asyncio.run(go())


def test_a_reviewer_lists_shows_and_approves_from_the_shell(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    first, second = submit(config, 5), submit(config, 6)
    runner = CliRunner()
    listed = runner.invoke(
        app, ["reviews", "list", "--status", "pending", "--json", "-c", str(config)]
    )
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows] == [first, second]
    assert ANSWER not in listed.stdout  # listing never shows content
    only = runner.invoke(app, ["reviews", "list", "--key-id", "6", "--json", "-c", str(config)])
    assert [r["id"] for r in json.loads(only.stdout)] == [second]

    shown = runner.invoke(app, ["reviews", "show", first, "--reviewer", "alice", "-c", str(config)])
    assert shown.exit_code == 0, shown.output
    assert ANSWER in shown.stdout and "Any tips?" in shown.stdout

    approved = runner.invoke(
        app,
        ["reviews", "approve", first, "--reviewer", "alice", "--reason", "ok", "-c", str(config)],
    )
    assert approved.exit_code == 0, approved.output
    rejected = runner.invoke(app, ["reviews", "reject", second, "--json", "-c", str(config)])
    assert json.loads(rejected.stdout)[0]["status"] == "rejected"
    again = runner.invoke(app, ["reviews", "approve", second, "-c", str(config)])
    assert again.exit_code == 1 and "already rejected" in again.output
    missing = runner.invoke(app, ["reviews", "show", "rev_none", "-c", str(config)])
    assert missing.exit_code == 1 and "No review" in missing.output

    by_target = {(e["target"], e["action"]): e for e in audit(config)}
    assert by_target[(first, "review.approve")]["actor"] == "cli:alice"
    assert by_target[(first, "review.show")]["actor"] == "cli:alice"
    assert str(by_target[(second, "review.reject")]["actor"]).startswith("cli:")

    purged = runner.invoke(app, ["reviews", "purge", "-c", str(config)])
    assert purged.exit_code == 0 and "Deleted 0" in purged.output


def test_the_review_commands_need_a_safety_section(tmp_path: Path) -> None:
    config = config_file(tmp_path, safety=False)
    done = CliRunner().invoke(app, ["reviews", "list", "-c", str(config)])
    assert done.exit_code == 2 and "safety:" in done.output


def test_keygen_prints_a_fresh_key_the_settings_accept(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["reviews", "keygen"]).stdout.strip()
    second = runner.invoke(app, ["reviews", "keygen"]).stdout.strip()
    assert first != second and len(base64.urlsafe_b64decode(first)) == 32
    settings = load_settings(
        {"data_dir": str(tmp_path), "safety": {"review": {"encryption_key": first}}}, env={}
    )
    assert settings.safety is not None
