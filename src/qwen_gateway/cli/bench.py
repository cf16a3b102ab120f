"""``qwen-gateway bench``: load-test OpenAI-compatible servers and plot the results.

``bench run`` drives one or more targets with the same requests, one target after the other,
and writes JSON results (and plots); ``bench plot`` draws several results files side by side.
Only loopback is benchmarked unless a target is named explicitly with ``--target``.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # the bench package (aiohttp, the tokenizer) loads when a command runs
    from qwen_gateway.bench.runner import Load, Record, Runner, Target
    from qwen_gateway.bench.workload import Lengths, PromptMaker, Workload

bench_app = typer.Typer(help="Load-test OpenAI-compatible servers and plot the results.")
err = Console(stderr=True)
#: the key read from the environment: sent to loopback targets only (a key given with
#: --api-key goes to every target, as asked)
KEY_ENV = "QWEN_GATEWAY_KEY"
MAX_REQUESTS = 1_000_000
MAX_CONCURRENCY = 10_000
_TARGET = re.compile(r"^(.+?)=(https?://\S+)$")


def _targets(
    url: str, named: list[str], api_key: str | None, model: str | None, env_key: str | None = None
) -> list[Target]:
    """The targets, each with the key it is sent: ``api_key`` (the option) to all of them,
    else ``env_key`` (from the environment) to loopback ones only, never to a remote one."""
    from qwen_gateway.bench.runner import Target, is_loopback_url

    def key(target_url: str) -> str | None:
        if api_key is not None:
            return api_key
        return env_key if is_loopback_url(target_url) else None

    if not named:
        if not is_loopback_url(url):
            err.print(
                f"[red]Refusing to benchmark {url}:[/red] it is not a loopback address. "
                "Load-test a remote server only on purpose: name it with --target NAME=URL."
            )
            raise typer.Exit(2)
        return [Target("target", url, key(url), model)]
    targets = []
    for spec in named:
        match = _TARGET.match(spec)  # the name may hold "=": the URL starts at "=http"
        if match is None:
            err.print(f"[red]--target {spec!r}:[/red] expected NAME=http(s)://host:port/v1")
            raise typer.Exit(2)
        targets.append(Target(match[1], match[2], key(match[2]), model))
    if len({t.name for t in targets}) != len(targets):
        err.print("[red]--target names must differ[/red]")
        raise typer.Exit(2)
    return targets


def _lengths(spec: str, option: str) -> Lengths:
    from qwen_gateway.bench.workload import Lengths

    try:
        return Lengths.parse(spec)
    except ValueError as exc:
        err.print(f"[red]{option}:[/red] {exc}")
        raise typer.Exit(2) from None


@bench_app.command("run")
def run(
    url: Annotated[
        str, typer.Option(help="API base of a loopback server (remote ones: --target).")
    ] = "http://127.0.0.1:8000/v1",
    target: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=URL of a server to benchmark, any address; repeat to compare several."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model name (default: GET /models' first).")
    ] = None,
    api: Annotated[str, typer.Option(help="chat or completions.")] = "chat",
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Stream (SSE).")] = True,
    concurrency: Annotated[
        int | None,
        typer.Option(help="Clients in a closed loop; with --rate, the cap on requests in flight."),
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Open loop: requests per second, Poisson arrivals.")
    ] = None,
    requests: Annotated[int, typer.Option(help="Requests per target.")] = 100,
    duration: Annotated[
        float | None, typer.Option(help="Stop each target after this many seconds.")
    ] = None,
    prompt_tokens: Annotated[
        str, typer.Option(help="Prompt length: N, uniform:LOW:HIGH or normal:MEAN:STD.")
    ] = "128",
    output_tokens: Annotated[
        str, typer.Option(help="max_tokens: N, uniform:LOW:HIGH or normal:MEAN:STD.")
    ] = "128",
    ignore_eos: Annotated[
        bool, typer.Option(help="Send ignore_eos (vLLM): generate exactly max_tokens.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of lengths, prompts and arrivals.")] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds allowed per request.")] = 600.0,
    api_key: Annotated[
        str | None,
        typer.Option(
            help=f"Bearer key sent to every target (else ${KEY_ENV}, sent to loopback ones only)."
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
    png: Annotated[Path | None, typer.Option(help="Write the comparison plot (PNG).")] = None,
    html: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report.")] = None,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Progress bar (default: on a terminal)."),
    ] = None,
) -> None:
    """Send the same requests to each target and report TTFT, inter-token and end-to-end
    latency percentiles, tokens/s, requests/s and errors by code."""
    from qwen_gateway.bench import report
    from qwen_gateway.bench.runner import BenchError, Load
    from qwen_gateway.bench.stats import summarize
    from qwen_gateway.bench.workload import PromptMaker, Workload

    if api not in ("chat", "completions"):
        err.print("[red]--api:[/red] chat or completions")
        raise typer.Exit(2)
    kind: Literal["chat", "completions"] = "chat" if api == "chat" else "completions"
    if concurrency is None and rate is None:
        concurrency = 8
    checks = [
        (1 <= requests <= MAX_REQUESTS, f"--requests: 1..{MAX_REQUESTS}"),
        (concurrency is None or 1 <= concurrency <= MAX_CONCURRENCY,
         f"--concurrency: 1..{MAX_CONCURRENCY}"),
        (rate is None or 0 < rate <= 1e6, "--rate: above 0"),
        (duration is None or 0 < duration <= 7 * 86400, "--duration: above 0, at most a week"),
        (0 < timeout <= 86400, "--timeout: above 0"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            err.print(f"[red]{message}[/red]")
            raise typer.Exit(2)
    targets = _targets(url, target or [], api_key, model, os.environ.get(KEY_ENV))
    workload = Workload(
        requests, _lengths(prompt_tokens, "--prompt-tokens"),
        _lengths(output_tokens, "--output-tokens"), seed,
    )  # fmt: skip
    load = Load(concurrency=concurrency, rate=rate, duration=duration, timeout=timeout)
    config: dict[str, Any] = {
        "api": api, "stream": stream, "requests": requests, "concurrency": concurrency,
        "rate": rate, "duration_s": duration, "timeout_s": timeout,
        "prompt_tokens": workload.prompt.describe(), "output_tokens": workload.output.describe(),
        "ignore_eos": ignore_eos, "seed": seed,
    }  # fmt: skip
    show = sys.stdout.isatty() if progress is None else progress
    maker = PromptMaker()
    results = []
    any_failed = False
    for t in targets:
        try:
            runner, records = _run_one(t, workload, load, kind, stream, ignore_eos, maker, show)
        except BenchError as exc:
            err.print(f"[red]{t.name}:[/red] {exc}")
            raise typer.Exit(1) from None
        summary = summarize(records, runner.elapsed)
        any_failed |= summary["succeeded"] == 0
        results.append(
            report.target_result(
                name=t.name,
                url=t.url,
                model=runner.model,
                config=config,
                summary=summary,
                records=records,
            )
        )
    doc = report.results(results)
    _print_summary(doc)
    if json_out is not None:
        report.write(doc, json_out)
    _plots(doc, png, html)
    if any_failed:
        raise typer.Exit(1)


def _run_one(
    target: Target,
    workload: Workload,
    load: Load,
    api: Literal["chat", "completions"],
    stream: bool,
    ignore_eos: bool,
    maker: PromptMaker,
    show: bool,
) -> tuple[Runner, list[Record]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from qwen_gateway.bench.runner import Runner

    console = Console()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[errors]} errors"), TimeElapsedColumn(),
        console=console, disable=not show, transient=False,
    ) as bar:  # fmt: skip
        task = bar.add_task(target.name, total=workload.requests, errors=0)
        failed = 0

        def tick(record: Record) -> None:
            nonlocal failed
            failed += record.error is not None and record.error != "cancelled"
            bar.update(task, advance=1, errors=failed)

        runner = Runner(
            target, workload, load, api=api, stream=stream, ignore_eos=ignore_eos,
            maker=maker, on_record=tick,
        )  # fmt: skip
        records = asyncio.run(runner.run())
    return runner, records


def _print_summary(doc: dict[str, Any]) -> None:
    table = Table(title="qwen-gateway bench (latencies in ms, p50 / p99)")
    for head in ("target", "ok", "errors", "req/s", "out tok/s", "TTFT", "ITL", "E2E"):
        table.add_column(head, justify="left" if head == "target" else "right")
    for t in doc["targets"]:
        s = t["summary"]

        def pair(key: str, s: dict[str, Any] = s) -> str:
            d = s[key]
            return "–" if d["p50"] is None else f"{d['p50']:.2f} / {d['p99']:.2f}"

        errors = ", ".join(f"{c}: {n}" for c, n in s["errors"].items()) or "0"
        if s["cancelled"]:
            errors += f" (+{s['cancelled']} cancelled at the time limit)"
        table.add_row(
            t["name"], f"{s['succeeded']}/{s['requests']}", errors,
            f"{s['requests_per_s']:.2f}", f"{s['output_tokens_per_s']:.1f}",
            pair("ttft_ms"), pair("itl_ms"), pair("e2e_ms"),
        )  # fmt: skip
    Console(width=140).print(table)


def _plots(doc: dict[str, Any], png: Path | None, html: Path | None) -> None:
    if png is None and html is None:
        return
    from qwen_gateway.bench.plot import PlotUnavailable, write_plots

    try:
        write_plots(doc, png, html)
    except PlotUnavailable as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@bench_app.command("plot")
def plot(
    files: Annotated[list[Path], typer.Argument(help="Results files of `bench run --json`.")],
    png: Annotated[Path | None, typer.Option(help="Write the comparison plot (PNG).")] = None,
    html: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report.")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the combined results.")
    ] = None,
) -> None:
    """Draw the targets of several results files side by side."""
    from qwen_gateway.bench import report

    if png is None and html is None and json_out is None:
        err.print("[red]Nothing to write:[/red] give --png, --html or --json")
        raise typer.Exit(2)
    try:
        doc = report.combine(files)
    except report.ResultsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if json_out is not None:
        report.write(doc, json_out)
    _plots(doc, png, html)
    _print_summary(doc)
