"""``qwen-gateway``: serve, chat, keys, usage, init-tiny-model, config show."""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from qwen_gateway.cli.admin import keys_app, usage
from qwen_gateway.cli.bench import bench_app
from qwen_gateway.cli.chat import chat
from qwen_gateway.cli.intent import intent_app
from qwen_gateway.cli.reviews import reviews_app
from qwen_gateway.cli.safety import safety_app
from qwen_gateway.config import ConfigError, Settings, load_settings, redacted

app = typer.Typer(
    name="qwen-gateway",
    help="OpenAI-compatible gateway for Qwen2.5 models.",
    no_args_is_help=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the configuration.")
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")
app.add_typer(intent_app, name="intent")
app.add_typer(reviews_app, name="reviews")
app.add_typer(safety_app, name="safety")
app.add_typer(bench_app, name="bench")
app.command("usage")(usage)
app.command("chat")(chat)
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file.", exists=True)
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Where the embedded model and data live.")
]


def _settings(cli: dict[str, Any], config: Path | None) -> Settings:
    try:
        return load_settings(cli, config_file=config)
    except ConfigError as exc:
        err.print(f"[red]Configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


def ensure_tiny_model(settings: Settings, *, embedding: bool = False) -> None:
    """Create the embedded tiny model (``embedding``: the tiny embedding model) on first
    start, with a progress bar."""
    target = Path(settings.embedding_model_path if embedding else settings.model_path)
    if (target / "model.safetensors").is_file():
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from qwen_gateway.engines.transformers.tiny import build_tiny_model

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err
    ) as progress:
        task = progress.add_task(f"Creating the tiny Qwen2.5 model in {target}", total=None)

        def report(stage: str) -> None:
            progress.update(task, description=f"Creating the tiny model: {stage}")

        # a seed of its own: the embedding model's weights are not the chat model's
        build_tiny_model(target, progress=report, seed=1 if embedding else 0, embedding=embedding)
    err.print(f"Tiny model ready in {target}")


def _bootstrap_notice(key: str, path: Path, tty: bool) -> str:
    """How the first admin key is shown: in full on a terminal, else only where it is written
    (stderr is often kept by log storage)."""
    if tty:
        shown = f"It is shown this once:\n\n    export QWEN_GATEWAY_KEY={key}\n\n"
    else:
        shown = f"Read it with:\n\n    export QWEN_GATEWAY_KEY=$(cat {path})\n\n"
    return (
        f"\nFirst start: an admin key was created, stored only as a hash, and written to {path} "
        f"(readable by you only; delete the file once you have stored the key). {shown}"
        "Create inference keys with `qwen-gateway keys create --name NAME` or POST /admin/keys.\n"
    )


def _banner(settings: Settings, bootstrap_key: str | None, key_file: Path) -> None:
    host = settings.server.host
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{shown}:{settings.server.port}"
    model = _example_model(settings)
    secured = settings.auth.enabled or settings.server.api_key is not None
    key = "os.environ['QWEN_GATEWAY_KEY']" if secured else "'none'"
    auth = ' -H "Authorization: Bearer $QWEN_GATEWAY_KEY"' if secured else ""
    if bootstrap_key is not None:
        sys.stderr.write(_bootstrap_notice(bootstrap_key, key_file, sys.stderr.isatty()))
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})
    lines = [
        f"\nqwen-gateway is ready at {base}  (model: {model})",
        *([f"  web chat: {base}/ui   admin: {base}/ui/admin"] if settings.server.ui else []),
        *([f"  openapi: {base}/openapi.json"] if settings.server.docs else []),
        f"  curl:    curl {base}/v1/chat/completions{auth} \\",
        f"             -H 'Content-Type: application/json' -d '{body}'",
        f"  python:  OpenAI(base_url='{base}/v1', api_key={key})"
        f".chat.completions.create(model='{model}', messages=[...])\n",
    ]
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()


def _example_model(settings: Settings) -> str:
    """The model name the start-up banner's examples use."""
    if settings.routing.intent.routes:
        return settings.routing.intent.model
    if settings.deployments:
        return settings.deployments[0].name
    return settings.served_model_name


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model directory or Hugging Face id (default: embedded tiny model)."),
    ] = None,
    served_name: Annotated[
        str | None, typer.Option("--served-name", help="Model name clients use.")
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="transformers (in-process, default), openai (an upstream server) or vllm "
            "(a managed vLLM child process, or --vllm-url)."
        ),
    ] = None,
    vllm_python: Annotated[
        str | None, typer.Option(help="For --engine vllm: the Python that has vLLM installed.")
    ] = None,
    vllm_url: Annotated[
        str | None, typer.Option(help="For --engine vllm: use this running vLLM instead.")
    ] = None,
    upstream_url: Annotated[
        str | None,
        typer.Option(help="For --engine openai: the upstream's base URL, e.g. http://host:8001/v1"),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, bfloat16, float16.")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Sequences per decode step.")] = None,
    context_window: Annotated[
        int | None, typer.Option(help="Context window in tokens (default: the model's).")
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without authentication (development only).")
    ] = False,
    api_key: Annotated[
        str | None, typer.Option(help="Require this Bearer key (also QWEN_GATEWAY_API_KEY).")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    log_file: Annotated[
        Path | None,
        typer.Option(help="Also write JSON logs to this file (rotated by size, see config)."),
    ] = None,
    ssl_certfile: Annotated[
        Path | None, typer.Option(help="TLS: the PEM certificate (chain); with --ssl-keyfile.")
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS: the PEM private key.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Server processes on the port (more than 1 needs redis.url)."),
    ] = None,
    drain_seconds: Annotated[
        float | None,
        typer.Option(help="On SIGTERM: seconds /ready answers 503 before the port closes."),
    ] = None,
    shutdown_grace: Annotated[
        int | None,
        typer.Option(help="On SIGTERM: seconds requests in flight may finish after that."),
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the OpenAI-compatible API (embedded tiny model unless --model is given)."""
    cli = {
        "data_dir": data_dir,
        "server": {
            "host": host,
            "port": port,
            "api_key": api_key,
            "log_level": log_level,
            "log_file": log_file,
            "ssl_certfile": ssl_certfile,
            "ssl_keyfile": ssl_keyfile,
            "workers": workers,
            "drain_seconds": drain_seconds,
            "shutdown_grace_seconds": shutdown_grace,
        },
        "auth": {"enabled": False if no_auth else None},
        "model": {
            "model": model,
            "served_name": served_name,
            "engine": engine,
            "upstream": {"base_url": upstream_url},
            "vllm": {"python": vllm_python, "remote_url": vllm_url},
            "device": device,
            "dtype": dtype,
            "max_batch_size": max_batch_size,
            "context_window": context_window,
        },
    }
    settings = _settings(cli, config)
    _refuse_remote_without_auth(settings)
    _refuse_unloadable_tls(settings)
    _refuse_workers_without_redis(settings)
    # the parent of several workers leaves fd 2 alone: the workers write their logs there
    _configure_logging(settings, native=settings.server.workers == 1)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # keys, usage, models
    if settings.needs_tiny_model:
        ensure_tiny_model(settings)  # the embedded default, also for a managed vLLM
    if settings.needs_tiny_embedding_model:
        ensure_tiny_model(settings, embedding=True)
    if settings.server.workers == 1:
        _serve_one(cli, config, settings)
        return
    from qwen_gateway.api.workers import supervise

    bootstrap_key, key_file = _prepare_store(settings)  # migrations, the first admin key: once
    if bootstrap_key is not None:
        sys.stderr.write(_bootstrap_notice(bootstrap_key, key_file, sys.stderr.isatty()))
    err.print(f"Starting {settings.server.workers} workers ...")
    code = supervise(settings.server, functools.partial(_worker, cli, config))
    from qwen_gateway.observability.logging import flush_logs

    flush_logs()
    raise typer.Exit(code)


def _configure_logging(
    settings: Settings, static: dict[str, Any] | None = None, native: bool = True
) -> None:
    from qwen_gateway.observability.logging import configure_logging

    s = settings.server
    configure_logging(
        s.log_level,
        log_file=s.log_file,
        max_bytes=s.log_max_bytes,
        backups=s.log_backups,
        console=None if s.log_format == "auto" else s.log_format == "console",
        static=static,
        native=native,
    )


def _worker(cli: dict[str, Any], config: Path | None, sock: Any, index: int, ready: Any) -> None:
    """One worker of several (a fresh interpreter): the same app on the shared socket."""
    import os

    try:
        settings = _settings(cli, config)
        _configure_logging(settings, {"worker": index, "pid": os.getpid()})
        _serve_one(cli, config, settings, sockets=[sock], worker=index, ready=ready.set)
    except typer.Exit as exc:  # no click runner here to turn it into the exit code
        sys.exit(exc.exit_code)


def _serve_one(
    cli: dict[str, Any],
    config: Path | None,
    settings: Settings,
    sockets: list[Any] | None = None,
    worker: int | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve in this process: the only one, or worker ``worker`` of several (the first shows
    the banner; each logs when it is ready)."""
    from qwen_gateway.api import server
    from qwen_gateway.api.app import create_app
    from qwen_gateway.container import Container

    try:
        # SIGHUP and POST /admin/safety/reload read the configuration again
        container = Container(settings, reload=lambda: load_settings(cli, config_file=config))
    except ConfigError as exc:
        err.print(f"[red]Configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    banner = worker in (None, 0)
    if not settings.auth.enabled and banner:
        err.print(
            "[bold red]WARNING: --no-auth: anyone who can reach this port can use the API and "
            "the admin endpoints. For local development only.[/bold red]"
        )

    def on_ready() -> None:
        if worker is not None:
            logging.getLogger(__name__).info("worker %d ready", worker)
        if ready is not None:
            ready()  # the parent: a death from now on is a crash to restart, not a start-up failure
        if banner:
            _banner(settings, container.bootstrap_key, container.bootstrap_key_file)

    application = create_app(container, on_ready=on_ready)
    names = [d.name for d in settings.deployments] or [settings.served_model_name]
    err.print(f"Loading {', '.join(names)} ...")
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again with the
    # handlers found at start: these write the queued log lines and exit 0
    signal.signal(signal.SIGTERM, _exit_after_shutdown)
    signal.signal(signal.SIGINT, _exit_after_shutdown)
    server.run(application, settings.server, sockets)


def _refuse_unloadable_tls(settings: Settings) -> None:
    """Exit 2 when the certificate or key cannot be loaded: checked here, once, rather than
    in each worker (which would fail the same way on every restart)."""
    import ssl

    s = settings.server
    if s.ssl_certfile is None or s.ssl_keyfile is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            s.ssl_certfile, s.ssl_keyfile
        )
    except (OSError, ssl.SSLError) as exc:
        err.print(
            f"[red]Cannot load the TLS certificate {s.ssl_certfile} with the key "
            f"{s.ssl_keyfile}:[/red] {exc}"
        )
        raise typer.Exit(2) from None


def _refuse_workers_without_redis(settings: Settings) -> None:
    """Exit 2 for several workers whose limits would each be counted per process."""
    if settings.server.workers == 1:
        return
    if settings.redis.url is None or settings.limits.backend == "local":
        err.print(
            f"[red]Refusing --workers {settings.server.workers} without Redis:[/red] each "
            "worker would count rate limits and quotas on its own, letting a key through "
            "several times its limit. Set redis.url (QWEN_GATEWAY_REDIS__URL) with "
            "limits.backend auto or redis, or run one worker per port behind a proxy."
        )
        raise typer.Exit(2)


def _prepare_store(settings: Settings) -> tuple[str | None, Path]:
    """Before the workers start: migrate the database and create the first admin key once
    (not once per worker, racing); the key if one was created, and its file."""
    import asyncio

    from qwen_gateway.container import bootstrap_admin_key
    from qwen_gateway.core.redact import strip_userinfo

    try:
        return asyncio.run(bootstrap_admin_key(settings))
    except ConfigError as exc:
        err.print(f"[red]Configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    except Exception as exc:  # the database unreachable, refusing, or its migration failing
        reason = strip_userinfo(" ".join(str(exc).split()))[:300] or type(exc).__name__
        err.print(f"[red]Cannot prepare the database before the workers start:[/red] {reason}")
        raise typer.Exit(1) from None


def _refuse_remote_without_auth(settings: Settings) -> None:
    """Exit 2 for auth off on an address other than loopback, unless explicitly allowed."""
    if settings.auth.enabled or settings.server.api_key is not None:
        return
    if settings.auth.allow_unauthenticated_remote or _is_loopback(settings.server.host):
        return
    err.print(
        f"[red]Refusing to serve without authentication on {settings.server.host}:[/red] "
        "anyone who can reach it could use the API and the admin endpoints. Listen on "
        "127.0.0.1, or set auth.allow_unauthenticated_remote: true "
        "(QWEN_GATEWAY_AUTH__ALLOW_UNAUTHENTICATED_REMOTE=true) if that is really intended."
    )
    raise typer.Exit(2)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it is reachable from elsewhere
        return False


def _exit_after_shutdown(signum: int, _: object) -> None:
    from qwen_gateway.observability.logging import flush_logs

    flush_logs()
    raise SystemExit(0)


@app.command("healthcheck")
def healthcheck(
    config: ConfigOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 4.0,
) -> None:
    """Exit 0 when this machine's gateway answers GET /health with 200 (for a container's
    HEALTHCHECK): the address, port and TLS come from the same settings as ``serve``."""
    import ssl
    import urllib.error
    import urllib.request

    s = _settings({}, config).server
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(s.host, s.host)
    context: ssl.SSLContext | None = None
    if s.ssl_certfile is not None:
        context = ssl.create_default_context()
        if _is_loopback(host):  # the certificate names the public host, not loopback
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    address = f"[{host}]" if ":" in host else host
    url = f"{'https' if context else 'http'}://{address}:{s.port}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as reply:
            status = reply.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        err.print(f"{url}: {exc}")
        raise typer.Exit(1) from None
    if status != 200:
        err.print(f"{url}: {status}")
        raise typer.Exit(1)


@app.command("init-tiny-model")
def init_tiny_model(
    directory: Annotated[Path, typer.Argument(help="Where to write the model.")],
    seed: Annotated[int, typer.Option(help="Random seed of the weights.")] = 0,
) -> None:
    """Write the tiny random-weight Qwen2 model (real Qwen2.5 tokenizer) to DIRECTORY."""
    from qwen_gateway.engines.transformers.tiny import build_tiny_model

    with err.status("Creating the tiny Qwen2.5 model ...") as status:
        build_tiny_model(directory, seed=seed, progress=lambda s: status.update(s))
    err.print(f"Wrote the tiny model to {directory}")


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Print the effective configuration with secrets redacted."""
    data = redacted(_settings({}, config))
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
