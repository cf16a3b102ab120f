"""``qwen-gateway reviews ...``: the human review queue from a shell, straight on the database
the servers use (pass the server's config: the queue exists only with a ``safety:`` section),
through the same review service as the admin API; ``reviews keygen`` makes an encryption key."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from qwen_gateway.cli.admin import ConfigOpt, DataDirOpt, JsonOpt, _settings, _table, err
from qwen_gateway.config import ConfigError
from qwen_gateway.container import build_reviews
from qwen_gateway.errors import GatewayError
from qwen_gateway.safety.crypto import generate_key
from qwen_gateway.service.admin import Actor
from qwen_gateway.service.reviews import ReviewItem, ReviewService

reviews_app = typer.Typer(
    help="The human review queue: list, show, approve, reject, purge; keygen for its key."
)
T = TypeVar("T")
ReviewerOpt = Annotated[
    str | None,
    typer.Option(help="Who decides, for the audit trail (default: this user's login name)."),
]
ReasonOpt = Annotated[
    str | None, typer.Option(help="Why (kept with the item, not in the audit trail).")
]


def _run(config: Any, data_dir: Any, work: Callable[[ReviewService], Awaitable[T]]) -> T:
    settings = _settings(config, data_dir)

    async def go() -> T:
        async with build_reviews(settings) as reviews:  # closing writes this command's audit
            return await work(reviews)

    try:
        return asyncio.run(go())
    except ConfigError as exc:
        err.print(f"[red]Configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    except GatewayError as exc:
        err.print(f"[red]Error:[/red] {exc.message}")
        raise typer.Exit(1) from None


def _reviewer(name: str | None) -> Actor:
    if name is None:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):  # no login name for this uid
            name = "unknown"
    return Actor(f"cli:{name}")


def _print(items: list[ReviewItem], as_json: bool, content: bool = False) -> None:
    views = [i.view(content=content) for i in items]
    if as_json:
        sys.stdout.write(json.dumps(views, indent=2, ensure_ascii=False) + "\n")
        return
    columns = ["id", "status", "mode", "direction", "category", "principal", "created_at",
               "reviewer"]  # fmt: skip
    _table(columns, [[str(v[c] if v[c] is not None else "-") for c in columns] for v in views])
    if content:
        for v in views:
            for part in ("prompt", "answer"):
                sys.stdout.write(f"\n{part}:\n{v[part] if v[part] is not None else '-'}\n")


@reviews_app.command("list")
def list_reviews(
    status: Annotated[
        str | None, typer.Option(help="pending, approved or rejected (default: all).")
    ] = None,
    category: Annotated[str | None, typer.Option(help="Only this category.")] = None,
    key_id: Annotated[int | None, typer.Option(help="Only this API key's items.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, oldest first.")] = 100,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """List review items (no content), oldest first."""
    items = _run(config, data_dir, lambda r: r.list(status, category, key_id, limit))
    _print(items, as_json)


@reviews_app.command("show")
def show(
    review_id: Annotated[str, typer.Argument(help="The item's id (rev_...).")],
    reviewer: ReviewerOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Show one item with its content, decrypted (the reading is audited)."""
    item = _run(config, data_dir, lambda r: r.show(review_id, _reviewer(reviewer)))
    _print([item], as_json, content=True)


def _decide(
    review_id: str, approve: bool, reviewer: str | None, reason: str | None, config: Any,
    data_dir: Any, as_json: bool,
) -> None:  # fmt: skip
    item = _run(
        config, data_dir, lambda r: r.decide(review_id, approve, _reviewer(reviewer), reason)
    )
    if as_json:
        _print([item], True)
    else:
        err.print(f"{item.record.id} {item.record.status}.")


@reviews_app.command("approve")
def approve(
    review_id: Annotated[str, typer.Argument(help="The item's id (rev_...).")],
    reviewer: ReviewerOpt = None,
    reason: ReasonOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Approve a pending item: a held answer is released to the key that asked."""
    _decide(review_id, True, reviewer, reason, config, data_dir, as_json)


@reviews_app.command("reject")
def reject(
    review_id: Annotated[str, typer.Argument(help="The item's id (rev_...).")],
    reviewer: ReviewerOpt = None,
    reason: ReasonOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Reject a pending item: a held answer is never released."""
    _decide(review_id, False, reviewer, reason, config, data_dir, as_json)


@reviews_app.command("purge")
def purge(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Delete the items older than safety.review.retention_days now (servers also do it
    periodically)."""
    deleted = _run(config, data_dir, lambda r: r.purge())
    err.print(f"Deleted {deleted} review item(s) past retention.")


@reviews_app.command("keygen")
def keygen() -> None:
    """Print a new key for safety.review.encryption_key (32 random bytes, urlsafe base64).
    Keep it secret and stable: content encrypted under one key cannot be read with another."""
    sys.stdout.write(generate_key() + "\n")
    err.print(
        "Put it in the config's safety: section as review.encryption_key (or in the "
        "environment as QWEN_GATEWAY_SAFETY__REVIEW__ENCRYPTION_KEY)."
    )
