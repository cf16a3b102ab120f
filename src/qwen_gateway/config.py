"""Settings: CLI flags > environment > YAML file > defaults. The only reader of the environment.

Environment variables: ``QWEN_GATEWAY_<SECTION>__<FIELD>`` (e.g. ``QWEN_GATEWAY_SERVER__PORT``),
plus the short forms ``QWEN_GATEWAY_API_KEY``, ``QWEN_GATEWAY_DATA_DIR``, ``QWEN_GATEWAY_CONFIG``
and the deployment conventions ``MODEL_NAME`` (model to serve) and ``MAX_CONTEXT_LENGTH``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

ENV_PREFIX = "QWEN_GATEWAY_"
TINY_MODEL_DIRNAME = "tiny-qwen2.5"
TINY_MODEL_NAME = "qwen2.5-tiny"

_ALIASES: dict[str, tuple[str, str]] = {
    "MODEL_NAME": ("model", "model"),
    "MAX_CONTEXT_LENGTH": ("model", "context_window"),
    ENV_PREFIX + "API_KEY": ("server", "api_key"),
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_key: SecretStr | None = None
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    keepalive_seconds: float = Field(default=15.0, gt=0)
    # on SIGTERM: how long requests in flight may finish before they are cut off
    shutdown_grace_seconds: int = Field(default=10, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class UpstreamSettings(Section):
    """For ``engine: openai``: an OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama)."""

    base_url: str = "http://127.0.0.1:8001/v1"
    model: str | None = None  # the upstream's name for the model; default: served_name
    api_key: SecretStr | None = None
    connect_timeout: float = Field(default=5.0, gt=0)
    first_token_timeout: float = Field(default=120.0, gt=0)
    idle_timeout: float = Field(default=60.0, gt=0)
    total_timeout: float = Field(default=1800.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    max_response_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)


class VLLMSettings(Section):
    """For ``engine: vllm``: a remote vLLM, or a managed ``vllm.entrypoints.openai.api_server``."""

    remote_url: str | None = None  # set: relay to this vLLM, start nothing
    python: str | None = None  # interpreter of the environment vLLM is installed in
    port: int = Field(default=0, ge=0, le=65535)  # 0: a free port
    max_model_len: int | None = Field(default=None, ge=16)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    quantization: Literal["awq", "gptq"] | None = None
    enable_prefix_caching: bool = True
    extra_args: list[str] = Field(default_factory=list)
    startup_timeout: float = Field(default=900.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict)


class ModelSettings(Section):
    #: Local directory or Hugging Face id; empty means the embedded tiny model.
    model: str | None = None
    served_name: str | None = None
    engine: str = "transformers"
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_batch_size: int = Field(default=32, ge=1, le=1024)
    max_waiting: int = Field(default=256, ge=1)
    #: None: the model's own window (131072 when the model does not say).
    context_window: int | None = Field(default=None, ge=16)
    max_output_tokens: int = Field(default=8192, ge=1)
    max_n: int = Field(default=8, ge=1, le=128)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)


class LimitSettings(Section):
    """Limits for a key tier, a JWT tier or a model (all models together for that model)."""

    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_concurrency: int | None = Field(default=None, ge=1)
    daily_tokens: int | None = Field(default=None, ge=1)
    monthly_tokens: int | None = Field(default=None, ge=1)


class JWTSettings(Section):
    """Bearer JWTs: set ``secret`` (HS256) or ``public_key`` (PEM text or a file path)."""

    secret: SecretStr | None = None
    public_key: str | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["HS256", "RS256", "ES256"])
    issuer: str | None = None
    audience: str | None = None
    leeway_seconds: float = Field(default=10.0, ge=0)
    models_claim: str = "models"
    tier_claim: str = "tier"
    admin_claim: str = "admin"
    default_tier: str | None = None


class AuthSettings(Section):
    enabled: bool = True  # false: no authentication at all (local development only)
    jwt: JWTSettings = Field(default_factory=JWTSettings)
    tiers: dict[str, LimitSettings] = Field(default_factory=dict)  # for JWT tier claims
    failure_limit: int = Field(default=20, ge=1)  # failed attempts per address and minute
    key_cache_seconds: float = Field(default=1.0, gt=0, le=1.0)


class LimitsSettings(Section):
    backend: Literal["auto", "local", "redis"] = "auto"  # auto: redis when redis.url is set
    models: dict[str, LimitSettings] = Field(default_factory=dict)
    lease_seconds: float = Field(default=600.0, gt=0)
    redis_prefix: str = Field(default="qwen-gateway", min_length=1)  # to share one Redis


class DatabaseSettings(Section):
    url: SecretStr | None = None  # default: sqlite in the data directory


class RedisSettings(Section):
    url: SecretStr | None = None  # e.g. redis://127.0.0.1:6379/0; needed for several replicas


class UsageSettings(Section):
    queue_size: int = Field(default=10_000, ge=10)
    batch_size: int = Field(default=500, ge=1)
    flush_seconds: float = Field(default=0.5, gt=0)


class Settings(Section):
    data_dir: Path = Field(
        default_factory=lambda: (
            Path(os.environ.get("XDG_DATA_HOME", str(Path.home() / ".local" / "share")))
            / "qwen-gateway"
        )
    )
    server: ServerSettings = Field(default_factory=ServerSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    usage: UsageSettings = Field(default_factory=UsageSettings)

    @property
    def database_url(self) -> str:
        if self.database.url is not None:
            return self.database.url.get_secret_value()
        return "sqlite+aiosqlite:///" + str(self.data_dir / "gateway.db")

    @property
    def embedded_model(self) -> bool:
        return not self.model.model and self.model.engine == "transformers"

    @property
    def model_path(self) -> str:
        return self.model.model or str(self.data_dir / TINY_MODEL_DIRNAME)

    @property
    def served_model_name(self) -> str:
        if self.model.served_name:
            return self.model.served_name
        return self.model.model or TINY_MODEL_NAME


class ConfigError(Exception):
    """A configuration value is wrong; the message names the key and the value."""


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (section, key) in _ALIASES.items():
        if env.get(name):
            out.setdefault(section, {})[key] = env[name]
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in _ALIASES:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if path == ["config"]:
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _drop_none(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: _drop_none(v) if isinstance(v, Mapping) else v for k, v in tree.items() if v is not None
    }


def load_settings(
    cli: Mapping[str, Any] | None = None,
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build the effective settings; ``cli`` holds nested overrides (None values ignored)."""
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    path = config_file or (
        Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None
    )
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"Cannot read config file {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"Config file {path} must hold a mapping at the top level.")
        merged = _merge(merged, loaded)
    merged = _merge(merged, _from_env(env))
    merged = _merge(merged, _drop_none(cli or {}))
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(
            f"Invalid config value for '{key}' ({err['input']!r}): {err['msg']}"
        ) from None


def redacted(settings: Settings) -> dict[str, Any]:
    """The settings as plain data with secrets masked, for ``config show``."""
    data = settings.model_dump(mode="json")
    if settings.server.api_key is not None:
        data["server"]["api_key"] = "**********"
    if settings.model.upstream.api_key is not None:
        data["model"]["upstream"]["api_key"] = "**********"
    for section in ("database", "redis"):
        if data[section]["url"] is not None:
            data[section]["url"] = _mask_url(getattr(settings, section).url.get_secret_value())
    if settings.auth.jwt.secret is not None:
        data["auth"]["jwt"]["secret"] = "**********"
    return data


def _mask_url(url: str) -> str:
    """The URL with its password masked."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:****@{host}"
