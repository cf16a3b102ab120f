"""``qwen-gateway keys ...`` and ``qwen-gateway usage``: key management and usage reports,
straight on the database the servers use (no server needs to run), through the same admin
service as the admin API."""

from __future__ import annotations

import asyncio
import csv
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from qwen_gateway.config import ConfigError, Settings, load_settings
from qwen_gateway.container import build_admin
from qwen_gateway.core.limits import KeyLimits
from qwen_gateway.errors import GatewayError
from qwen_gateway.policy.keys import key_view
from qwen_gateway.service.admin import CLI, GROUPS, USAGE_COLUMNS, AdminService
from qwen_gateway.store.keys import KeyRecord

keys_app = typer.Typer(help="Create, list, show, update, revoke and rotate API keys.")
err = Console(stderr=True)
T = TypeVar("T")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file.", exists=True)
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Where the data (SQLite database) lives.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
# a key's limits (core.limits.KeyLimits), as `keys create` and `keys update` take them
RpmOpt = Annotated[int | None, typer.Option(help="Requests per minute.", min=1)]
TpmOpt = Annotated[int | None, typer.Option(help="Tokens per minute.", min=1)]
ConcurrencyOpt = Annotated[int | None, typer.Option(help="Concurrent requests.", min=1)]
DailyOpt = Annotated[int | None, typer.Option(help="Token budget per UTC day.", min=1)]
MonthlyOpt = Annotated[int | None, typer.Option(help="Token budget per UTC month.", min=1)]
DefaultMaxOpt = Annotated[
    int | None, typer.Option(help="Output tokens for requests that send no max_tokens.", min=1)
]
TierOpt = Annotated[
    str | None, typer.Option(help="The key's tier (content-safety policies select tiers).")
]


def _settings(config: Path | None, data_dir: Path | None) -> Settings:
    try:
        return load_settings({"data_dir": data_dir}, config_file=config)
    except ConfigError as exc:
        err.print(f"[red]Configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


def _run(settings: Settings, work: Callable[[AdminService], Awaitable[T]]) -> T:
    async def go() -> T:
        async with build_admin(settings) as admin:  # closing writes this command's audit
            return await work(admin)

    try:
        return asyncio.run(go())
    except GatewayError as exc:
        err.print(f"[red]Error:[/red] {exc.message}")
        raise typer.Exit(1) from None


def _expiry(text: str | None) -> datetime | None:
    """'30d', '12h', '90m', or an ISO date/time (UTC unless it says otherwise)."""
    if text is None:
        return None
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if text[:-1].isdigit() and text[-1:] in units:
        try:
            return datetime.now(UTC) + timedelta(**{units[text[-1]]: int(text[:-1])})
        except OverflowError:
            err.print(f"[red]--expires:[/red] '{text}' is too far in the future.")
            raise typer.Exit(2) from None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        err.print(f"[red]--expires:[/red] '{text}' is neither like 30d/12h/90m nor an ISO date.")
        raise typer.Exit(2) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _print_keys(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return
    table_rows = []
    for r in rows:
        limits = ", ".join(
            f"{k}={r[k]}" for k in ("rpm", "tpm", "max_concurrency", "daily_tokens",
                                    "monthly_tokens", "default_max_tokens", "tier") if r.get(k) is not None
        )  # fmt: skip
        table_rows.append([
            str(r["id"]), r["name"], r["prefix"], r["role"],
            ",".join(r["models"]) if r["models"] is not None else "all",
            limits or "-", r["expires_at"] or "-", r["status"],
        ])  # fmt: skip
    _table(["id", "name", "prefix", "role", "models", "limits", "expires", "status"], table_rows)


def _table(columns: list[str], rows: list[list[str]]) -> None:
    """A table on a terminal; tab-separated lines, nothing cut short, when piped."""
    if not sys.stdout.isatty():
        for line in (columns, *rows):
            sys.stdout.write("\t".join(line) + "\n")
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*row)
    Console().print(table, markup=False)


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="A label for the key (who or what uses it).")],
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models the key may use (default: all).")
    ] = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_concurrency: ConcurrencyOpt = None,
    daily_tokens: DailyOpt = None,
    monthly_tokens: MonthlyOpt = None,
    default_max_tokens: DefaultMaxOpt = None,
    tier: TierOpt = None,
    expires: Annotated[
        str | None, typer.Option(help="Expiry: 30d, 12h, 90m or an ISO date/time.")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="An admin key (for /admin).")] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a key. The key is printed once; only its hash is stored."""
    allowed = tuple(m.strip() for m in models.split(",") if m.strip()) if models else None
    secret, record = _run(
        _settings(config, data_dir),
        lambda a: a.create_key(
            name,
            CLI,
            role="admin" if admin else "inference",
            models=allowed,
            limits=KeyLimits(
                rpm=rpm,
                tpm=tpm,
                max_concurrency=max_concurrency,
                daily_tokens=daily_tokens,
                monthly_tokens=monthly_tokens,
                default_max_tokens=default_max_tokens,
                tier=tier,
            ),
            expires_at=_expiry(expires),
        ),
    )
    view = {"key": secret, **key_view(record)}
    if as_json:
        sys.stdout.write(json.dumps(view, indent=2, ensure_ascii=False) + "\n")
        return
    err.print(f"Created key {record.id} ({record.name!r}). It is shown this once:")
    sys.stdout.write(secret + "\n")


@keys_app.command("list")
def list_keys(
    as_json: JsonOpt = False, config: ConfigOpt = None, data_dir: DataDirOpt = None
) -> None:
    """List keys (never their secrets)."""
    records = _run(_settings(config, data_dir), lambda a: a.list_keys())
    _print_keys([key_view(r) for r in records], as_json)


@keys_app.command("show")
def show(
    key_id: Annotated[int, typer.Argument(help="The key's id.")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Show one key."""
    record = _run(_settings(config, data_dir), lambda a: a.key(key_id))
    _print_keys([key_view(record)], as_json)


@keys_app.command("update")
def update(
    key_id: Annotated[int, typer.Argument(help="The key's id.")],
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_concurrency: ConcurrencyOpt = None,
    daily_tokens: DailyOpt = None,
    monthly_tokens: MonthlyOpt = None,
    default_max_tokens: DefaultMaxOpt = None,
    tier: TierOpt = None,
    clear: Annotated[
        str | None, typer.Option(help="Comma-separated limits to remove, e.g. rpm,tpm.")
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Change a key's limits: those given replace the key's, --clear removes some; every
    replica applies them within a second."""
    given = {
        "rpm": rpm, "tpm": tpm, "max_concurrency": max_concurrency,
        "daily_tokens": daily_tokens, "monthly_tokens": monthly_tokens,
        "default_max_tokens": default_max_tokens, "tier": tier,
    }  # fmt: skip
    cleared = [c.strip() for c in clear.split(",") if c.strip()] if clear else []
    if any(c not in given for c in cleared):
        err.print(f"[red]--clear[/red] takes a comma-separated subset of {', '.join(given)}.")
        raise typer.Exit(2)
    changes: dict[str, int | str | None] = {k: v for k, v in given.items() if v is not None}
    changes.update(dict.fromkeys(cleared))

    async def work(a: AdminService) -> KeyRecord:
        current = await a.key(key_id)
        return await a.update_limits(key_id, current.limits.model_copy(update=changes), CLI)

    record = _run(_settings(config, data_dir), work)
    _print_keys([key_view(record)], as_json)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[int, typer.Argument(help="The key's id.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Revoke a key: every replica refuses it within a second."""
    record = _run(_settings(config, data_dir), lambda a: a.revoke_key(key_id, CLI))
    err.print(f"Revoked key {record.id} ({record.name!r}).")


@keys_app.command("rotate")
def rotate(
    key_id: Annotated[int, typer.Argument(help="The key's id.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Give a key a new secret (printed once); the old secret stops working."""
    secret, record = _run(_settings(config, data_dir), lambda a: a.rotate_key(key_id, CLI))
    err.print(f"Rotated key {record.id} ({record.name!r}). The new key is shown this once:")
    sys.stdout.write(secret + "\n")


def usage(
    group_by: Annotated[
        str, typer.Option(help="Comma-separated: key, model, deployment, arm, day, hour.")
    ] = "key,model,day",
    since: Annotated[str | None, typer.Option(help="From this ISO date/time (UTC).")] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Requests and tokens per key, model (as asked for), deployment (as answered), split arm
    and day or hour (UTC)."""
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    if any(g not in GROUPS for g in groups) or len(set(groups)) != len(groups):
        err.print(
            "[red]--group-by[/red] takes a comma-separated subset of key, model, deployment, "
            "arm, day, hour."
        )
        raise typer.Exit(2)
    start = _expiry(since) if since else None
    fmt = "json" if as_json else "csv" if as_csv else "table"
    rows = _run(
        _settings(config, data_dir), lambda a: a.usage(groups, CLI, since=start, format=fmt)
    )
    columns = [*groups, *USAGE_COLUMNS]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    elif as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in columns})
    else:
        _table(columns, [[str(row.get(k)) for k in columns] for row in rows])
