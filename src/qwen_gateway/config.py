"""Settings: CLI flags > environment > YAML file > defaults. The only reader of the environment.

Environment variables: ``QWEN_GATEWAY_<SECTION>__<FIELD>`` (e.g. ``QWEN_GATEWAY_SERVER__PORT``),
plus the short forms ``QWEN_GATEWAY_API_KEY``, ``QWEN_GATEWAY_DATA_DIR``, ``QWEN_GATEWAY_CONFIG``
and the deployment conventions ``MODEL_NAME`` (model to serve) and ``MAX_CONTEXT_LENGTH``.
``QWEN_GATEWAY_KEY`` is the variable clients read their key from: it is not a setting.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from qwen_gateway.core.limits import Limits
from qwen_gateway.core.redact import looks_secret, mask_url

ENV_PREFIX = "QWEN_GATEWAY_"
TINY_MODEL_DIRNAME = "tiny-qwen2.5"
TINY_MODEL_NAME = "qwen2.5-tiny"
TINY_EMBED_MODEL_DIRNAME = "tiny-qwen2.5-embed"
#: the embedded default's embedding deployment, beside the tiny chat model
TINY_EMBED_MODEL_NAME = "qwen-tiny-embed"

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
    # peers (addresses or CIDRs) whose X-Forwarded-For / X-Forwarded-Proto are believed
    trusted_proxies: list[str] = Field(default_factory=list)
    # a connection must send its request line and headers within this time, and a request
    # body may pause at most idle_timeout_seconds between bytes; then it is closed
    header_timeout_seconds: float = Field(default=30.0, gt=0)
    idle_timeout_seconds: float = Field(default=60.0, gt=0)
    # open connections (more are closed as they are accepted) and requests in flight (more
    # get 503); lowered at start to fit the open-file limit
    limit_concurrency: int = Field(default=2048, ge=1)
    docs: bool = False  # serve /openapi.json (never Swagger UI or ReDoc: they load CDN JS)
    #: the browser pages: the chat at /ui, the admin console at /ui/admin (false: 404)
    ui: bool = True

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxy_list(cls, value: Any) -> Any:
        """A list, or a comma-separated string (environment); each entry an address or CIDR."""
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            return items
        # ValueError: reported as a config error naming the key
        return [str(ipaddress.ip_network(str(i).strip(), strict=False)) for i in items]

    #: true: /metrics needs an admin key or ``metrics_token`` (false: open, for a Prometheus
    #: on a private network)
    metrics_auth: bool = False
    metrics_token: SecretStr | None = None  # a Bearer token for the scraper (with metrics_auth)
    #: TLS: a PEM certificate (chain) and its private key; both or neither
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    #: server processes sharing the port (more than one needs ``redis.url``: limits are shared)
    workers: int = Field(default=1, ge=1, le=64)
    #: on SIGTERM: how long /ready answers 503 and new requests are refused before the port
    #: closes (time for a load balancer to notice); requests in flight then get
    #: ``shutdown_grace_seconds`` to finish
    drain_seconds: float = Field(default=0.0, ge=0, le=600)
    #: also write the logs to this file, rotated at ``log_max_bytes`` keeping ``log_backups``
    log_file: Path | None = None
    log_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    log_backups: int = Field(default=5, ge=0, le=1000)
    #: stderr's format: ``auto`` is human-readable on a terminal and JSON lines otherwise
    log_format: Literal["auto", "json", "console"] = "auto"

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("server.ssl_certfile and server.ssl_keyfile go together")
        return self


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
    #: the upstream returns token logprobs when asked (off: such requests are a 400 here)
    logprobs: bool = True
    #: the upstream serves completions ``echo`` with logprobs (vLLM does; OpenAI does not)
    echo: bool = False


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
    #: Output tokens for a request that sends neither max_tokens nor max_completion_tokens
    #: (chat front ends often send none); a key's own default wins; both are capped by
    #: max_output_tokens. None: up to max_output_tokens.
    default_max_tokens: int | None = Field(default=2048, ge=1)
    max_n: int = Field(default=8, ge=1, le=128)
    #: ``generate``: a chat/completions model; ``embed``: an embedding model (/v1/embeddings
    #: only; in-process it is a Qwen2 decoder with last-token pooling, gte-Qwen2's recipe)
    task: Literal["generate", "embed"] = "generate"
    #: an embedding model may be asked for fewer ``dimensions`` (truncated, renormalised):
    #: only for models trained for it (Matryoshka); otherwise such a request is a 400
    supports_dimensions: bool = False
    #: the most tokens one embeddings request may hold, all inputs together
    max_embedding_tokens: int = Field(default=300_000, ge=1)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
    #: Extra options handed to the engine kind's factory (for engines registered as plugins).
    options: dict[str, Any] = Field(default_factory=dict)


_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$"
_NAME_RULE = "names are 1–128 letters, digits and . _ : / @ + -, starting with a letter or digit"


class CapabilitySettings(Section):
    """What a deployment can do; requests needing a missing capability skip it."""

    tools: bool = True
    json_schema: bool = True
    #: token logprobs (chat ``logprobs``/``top_logprobs``, completions ``logprobs``), where
    #: the engine gives them
    logprobs: bool = True
    #: completions ``echo``, where the engine can (with logprobs: the prompt's logprobs)
    echo: bool = True


class DeploymentSettings(ModelSettings):
    """One deployment of the registry: a model on an engine, on one or more replicas."""

    name: str = Field(pattern=_NAME)
    aliases: list[str] = Field(default_factory=list)
    #: Base URLs of the replicas (engines ``openai`` and ``vllm``), or how many in-process
    #: copies to run (engine ``transformers``). One replica by default.
    replicas: int | list[str] = 1
    #: Names of the replicas in metrics, logs and the route header (default: 0, 1, 2 ...);
    #: never their URLs, which may hold credentials.
    replica_labels: list[str] = Field(default_factory=list)
    #: Requests this deployment serves at once (all replicas together); beyond it the
    #: request goes to a fallback, or is a 503.
    max_concurrency: int | None = Field(default=None, ge=1)
    capabilities: CapabilitySettings = Field(default_factory=CapabilitySettings)
    #: Public model names tried in order when every replica failed before the first token,
    #: or when the request is too long for this deployment's window.
    fallbacks: list[str] = Field(default_factory=list)


class BreakerSettings(Section):
    """Per replica: this many consecutive failures open it for ``cooldown_seconds``; then
    one request probes it (half-open) and closes it again on success."""

    failures: int = Field(default=5, ge=1)
    cooldown_seconds: float = Field(default=30.0, gt=0)


class SplitSettings(Section):
    """A public model name whose traffic is split across deployments by weight."""

    arms: dict[str, float] = Field(min_length=1)  # deployment (or alias) -> weight
    #: Same caller, same arm: by the request's ``user`` field or by the API key / JWT subject.
    sticky: Literal["none", "user", "key"] = "none"


class IntentSettings(Section):
    """Requests to the virtual model ``model`` are classified offline and routed by category."""

    model: str = Field(default="auto", pattern=_NAME)
    classifier: Literal["learned", "rules"] = "learned"
    #: Below this confidence the learned classifier answers ``default``.
    threshold: float = Field(default=0.45, ge=0, le=1)
    default: str = "general"
    #: category -> public model name (deployment, alias or split). Empty: no intent routing.
    routes: dict[str, str] = Field(default_factory=dict)
    #: Rule classifier patterns per category (regexes, case-insensitive); None: built-in.
    rules: dict[str, list[str]] | None = None
    #: A classifier written by ``qwen-gateway intent train``; None: ``intent-model.json`` in
    #: the data directory when present, else trained from the shipped examples at start.
    model_file: Path | None = None


class RoutingSettings(Section):
    strategy: Literal["least_outstanding", "power_of_two"] = "least_outstanding"
    #: Same ``user`` (or key) -> same replica while it is healthy, to reuse its prefix cache.
    affinity: Literal["none", "user", "key"] = "none"
    health_interval_seconds: float = Field(default=5.0, gt=0)
    #: Engine starts tried per request, over replicas and fallbacks, before the first token.
    max_attempts: int = Field(default=4, ge=1, le=32)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    splits: dict[str, SplitSettings] = Field(default_factory=dict)
    intent: IntentSettings = Field(default_factory=IntentSettings)


class JWTSettings(Section):
    """Bearer JWTs: set ``secret`` (HS256) or ``public_key`` (PEM text or a file path)."""

    secret: SecretStr | None = None  # at least 32 bytes (48 for HS384, 64 for HS512)
    public_key: str | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["HS256", "RS256", "ES256"])
    issuer: str | None = None
    #: Required with JWT: the ``aud`` the tokens must carry; ``none``: accept any audience.
    audience: str | None = None
    leeway_seconds: float = Field(default=10.0, ge=0)
    #: Tokens valid for longer than this (``exp - iat``, or ``exp - now``) are refused.
    max_lifetime_seconds: float = Field(default=86400.0, gt=0)
    models_claim: str = "models"
    tier_claim: str = "tier"
    #: None: no token is admin. A claim name: a token whose claim is ``true`` is admin.
    admin_claim: str | None = None
    #: The tier of tokens without a tier claim; None with tiers configured: such tokens are
    #: refused.
    default_tier: str | None = None


class AuthSettings(Section):
    enabled: bool = True  # false: no authentication at all (local development only)
    jwt: JWTSettings = Field(default_factory=JWTSettings)
    tiers: dict[str, Limits] = Field(default_factory=dict)  # for JWT tier claims
    failure_limit: int = Field(default=20, ge=1)  # failed attempts per address and minute
    # enabled: false is refused on a host other than loopback unless this is set too
    allow_unauthenticated_remote: bool = False
    key_cache_seconds: float = Field(default=1.0, gt=0, le=1.0)


class LimitsSettings(Section):
    backend: Literal["auto", "local", "redis"] = "auto"  # auto: redis when redis.url is set
    models: dict[str, Limits] = Field(default_factory=dict)
    lease_seconds: float = Field(default=30.0, gt=0)  # renewed while the request runs
    redis_prefix: str = Field(default="qwen-gateway", min_length=1)  # to share one Redis


class DatabaseSettings(Section):
    url: SecretStr | None = None  # default: sqlite in the data directory


class RedisSettings(Section):
    url: SecretStr | None = None  # e.g. redis://127.0.0.1:6379/0; needed for several replicas
    #: connections per gateway process; a request finding all busy waits for one (up to 5 s)
    max_connections: int = Field(default=512, ge=2)


class UsageSettings(Section):
    queue_size: int = Field(default=10_000, ge=10)
    batch_size: int = Field(default=500, ge=1)
    flush_seconds: float = Field(default=0.5, gt=0)


class RiskClassifierSettings(Section):
    """``safety.classifier``: the high-risk classifier (financial, medical, legal advice)."""

    #: A classifier written by ``qwen-gateway safety train``; None: ``risk-model.json`` in the
    #: data directory when present, else the model shipped with the package.
    model_file: Path | None = None
    #: Below this confidence a text is in no high-risk category.
    threshold: float = Field(default=0.5, ge=0, le=1)


DEFAULT_REVIEW_NOTICE = (
    "This answer is being reviewed by a person; fetch it with GET /v1/reviews/{review_id} "
    "once it is approved. 该回答正在人工审核中，审核通过后可通过 GET /v1/reviews/{review_id} 获取。"
)


class ReviewSettings(Section):
    """``safety.review``: the human review queue.

    ``encryption_key``: the key the content of review items is encrypted with (AES-256-GCM):
    32 bytes, urlsafe base64, as ``qwen-gateway reviews keygen`` prints; required while
    ``store_content`` is on. ``store_content``: keep the prompt and answer of a review item
    (encrypted) for the reviewer and for release; off: items hold metadata only, and a held
    answer cannot be released. ``retention_days``: items are deleted this long after they
    were made. ``notice``: what a client receives instead of a held answer; ``{review_id}``
    is replaced by the item's id."""

    encryption_key: SecretStr | None = None
    store_content: bool = True
    retention_days: int = Field(default=30, ge=1, le=36_500)
    notice: str = Field(default=DEFAULT_REVIEW_NOTICE, min_length=1, max_length=2000)
    #: how often each replica deletes expired items and refreshes the queue gauges
    maintenance_seconds: float = Field(default=60.0, gt=0)

    @field_validator("encryption_key")
    @classmethod
    def _key_is_32_bytes(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            import base64
            import binascii

            try:
                raw = base64.urlsafe_b64decode(value.get_secret_value().encode("ascii"))
            except (binascii.Error, UnicodeEncodeError, ValueError):
                raw = b""
            if len(raw) != 32:
                raise ValueError(
                    "must be 32 bytes in urlsafe base64 (make one with `qwen-gateway reviews "
                    "keygen`)"
                )
        return value

    @field_validator("notice")
    @classmethod
    def _notice_names_the_review(cls, value: str) -> str:
        if "{review_id}" not in value:
            raise ValueError("must contain the placeholder {review_id}")
        try:
            value.format(review_id="rev_0")
        except (KeyError, IndexError, ValueError):
            raise ValueError(
                "may use only the placeholder {review_id} (write other braces as {{ and }})"
            ) from None
        return value


SafetyAction = Literal["block", "redact", "flag", "review"]


class DirectedAction(Section):
    """An action per direction: ``input`` (the prompt) and ``output`` (the answer); None: the
    category is not acted on in that direction."""

    input: SafetyAction | None = None
    output: SafetyAction | None = None


class RuleSetSettings(Section):
    """A named rule set: keyword lists and regexes by category, from files and inline.

    ``files``: YAML rule files (``default`` names the lists shipped with the gateway;
    otherwise a path); ``keywords`` / ``regex``: category -> entries, added to the files'.
    Keywords match after normalisation (width, case, traditional/simplified Chinese,
    separators and invisible characters); regexes run over the normalised text."""

    files: list[str] = Field(default_factory=list)
    keywords: dict[str, list[str]] = Field(default_factory=dict)
    regex: dict[str, list[str]] = Field(default_factory=dict)


class SafetyPolicySettings(Section):
    """Which rule sets (and classifier categories) apply to whom, and what each category does.

    A policy applies to a request when each of its selectors that is set matches (no selector:
    all traffic): ``keys`` (API key ids), ``tiers`` (a key's tier or a JWT's tier claim),
    ``deployments`` (the deployment the request was routed to; for the prompt, the deployment
    or alias the client named). When several policies apply their rule sets are joined and
    the strongest action per category wins (block > redact > review > flag)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    rule_sets: list[str] = Field(default_factory=list)
    keys: list[int] = Field(default_factory=list)
    tiers: list[str] = Field(default_factory=list)
    deployments: list[str] = Field(default_factory=list)
    #: category (a rule category, a classifier category, or ``*`` for every other rule
    #: category) -> one action for both directions, or per direction
    actions: dict[str, SafetyAction | DirectedAction] = Field(default_factory=dict)
    #: what a ``review`` does: ``deliver_and_review`` (the client gets the answer, a human
    #: looks later) or ``hold`` (the client gets a notice with a review id, and the answer
    #: once a reviewer approves it)
    review: Literal["deliver_and_review", "hold"] = "deliver_and_review"


class SafetySettings(Section):
    """``safety:``: content safety. Absent: nothing is filtered, classified or stored."""

    classifier: RiskClassifierSettings = Field(default_factory=RiskClassifierSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)

    rule_sets: dict[str, RuleSetSettings] = Field(default_factory=dict)
    policies: list[SafetyPolicySettings] = Field(default_factory=list)
    #: the character a redacted span is replaced with (one per character of the span)
    mask: str = Field(default="*", min_length=1, max_length=1)


class NearCacheSettings(Section):
    """``cache.similar``: reuse the answer to a near-identical last user message (same caller,
    same deployment, same everything else). Off unless this section is given."""

    #: similarity a stored message must reach (0–1]; see docs/benchmarks.md for the false-hit
    #: rate at the default
    threshold: float = Field(default=0.75, gt=0, le=1)
    max_entries: int = Field(default=10_000, ge=1)


class CacheSettings(Section):
    """``cache:``: the exact response cache. Absent: nothing is cached (no stage at all)."""

    #: ``local``: an LRU in this process, bounded by ``max_bytes``; ``redis``: shared by every
    #: replica on ``redis.url`` (required then)
    backend: Literal["local", "redis"] = "local"
    #: ``tenant``: entries are the caller's own (a hit never crosses keys); ``shared``: every
    #: caller reads what any caller stored
    scope: Literal["tenant", "shared"] = "tenant"
    ttl_seconds: float = Field(default=3600.0, gt=0)
    #: the in-process store's bound, in bytes (keys, encoded answers and a per-entry overhead)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    #: answers larger than this (encoded) are not stored, in either backend
    max_entry_bytes: int = Field(default=1024 * 1024, ge=256)
    #: Redis keys are ``<redis_prefix>:<hash>``
    redis_prefix: str = Field(default="qwen-gateway:cache", min_length=1)
    #: cache requests sampled with temperature > 0 and no seed as well
    cache_nondeterministic: bool = False
    #: cache answers that call tools as well
    cache_tool_calls: bool = False
    #: ``charged``: a hit counts its tokens against limits and in usage like the original;
    #: ``free``: a hit counts 0 tokens (requests and concurrency are still counted)
    billing: Literal["charged", "free"] = "charged"
    #: API key ids (``keys list``) whose requests never use the cache
    exclude_keys: list[int] = Field(default_factory=list)
    #: principal ids (``key:3``, ``jwt:alice``, ``static``, ``anonymous``) likewise
    exclude_principals: list[str] = Field(default_factory=list)
    #: near-duplicate lookups (None: exact matches only); only with ``scope: tenant``
    similar: NearCacheSettings | None = None


class ResponsesSettings(Section):
    """``responses:``: the Responses API's stored responses. Off by default: no prompt or
    answer text is kept; ``store: true`` requests and ``previous_response_id`` then get a 400."""

    store: bool = False  # keep responses (input and output text) in the database
    retention_days: int = Field(default=30, ge=1, le=36_500)  # then they are deleted
    purge_seconds: float = Field(default=3600.0, gt=0)  # how often expired ones are deleted


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
    #: The model registry; empty: one deployment made of the ``model`` section.
    deployments: list[DeploymentSettings] = Field(default_factory=list)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    safety: SafetySettings | None = None
    cache: CacheSettings | None = None
    responses: ResponsesSettings = Field(default_factory=ResponsesSettings)

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
    def intent_model_file(self) -> Path:
        """Where ``intent train`` saves the learned classifier and routing loads it from."""
        return self.routing.intent.model_file or self.data_dir / "intent-model.json"

    @property
    def risk_model_file(self) -> Path:
        """Where ``safety train`` saves the high-risk classifier and safety loads it from."""
        if self.safety is not None and self.safety.classifier.model_file is not None:
            return self.safety.classifier.model_file
        return self.data_dir / "risk-model.json"

    @property
    def embedding_model_path(self) -> str:
        """The embedded tiny embedding model's directory (an ``embed`` deployment naming no
        model serves it)."""
        return str(self.data_dir / TINY_EMBED_MODEL_DIRNAME)

    @property
    def needs_tiny_embedding_model(self) -> bool:
        """Whether some deployment serves the embedded tiny embedding model: the embedded
        default does (``qwen-tiny-embed``), and an in-process ``embed`` deployment naming no
        model."""
        if not self.deployments:
            return self.embedded_model
        return any(
            not d.model and d.task == "embed" and d.engine == "transformers"
            for d in self.deployments
        )

    @property
    def needs_tiny_model(self) -> bool:
        """Whether some deployment serves the embedded tiny model (created at first start)."""
        if not self.deployments:
            return not self.model.model and self.model.engine != "openai"
        return any(
            not d.model
            and not isinstance(d.replicas, list)
            and d.task == "generate"
            and (d.engine == "transformers" or (d.engine == "vllm" and not d.vllm.remote_url))
            for d in self.deployments
        )

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
        if path in (["config"], ["key"]):  # QWEN_GATEWAY_KEY: the clients' key, not a setting
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
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in err["loc"])
        value = err["input"]
        # a misspelt key may well hold a secret; a mapping (e.g. the parent of a missing key)
        # may hold one anywhere
        plain = [value] if not isinstance(value, list) else value
        shown = err["type"] != "extra_forbidden" and not any(
            isinstance(v, dict) and v for v in plain
        )
        raise _bad(key, value if shown else _HIDDEN, err["msg"]) from None
    check_registry(settings)
    check_auth(settings)
    check_limits(settings)
    return settings


_HIDDEN = object()
# values under these keys may hold credentials: errors show them masked (URLs) or not at all
_URL_HOLDERS = {"url", "base_url", "remote_url", "replicas"}
_SECRET_HOLDERS = {"env", "options", "extra_args"}


def _bad(key: str, value: Any, why: str) -> ConfigError:
    """The error for a bad value; only the values of known, non-secret keys are shown."""
    parts = set(key.split("."))
    if parts & _URL_HOLDERS and value is not _HIDDEN:
        value = _masked_urls(value)
    elif parts & _SECRET_HOLDERS or any(map(looks_secret, parts)):
        value = _HIDDEN
    if value is _HIDDEN:
        return ConfigError(f"Invalid config value for '{key}' (value not shown): {why}")
    return ConfigError(f"Invalid config value for '{key}' ({value!r}): {why}")


def _masked_urls(value: Any) -> Any:
    """A URL (or a list of them) with credentials masked; _HIDDEN for anything else that could
    hold one."""
    if isinstance(value, list):
        masked = [_masked_urls(v) for v in value]
        return _HIDDEN if _HIDDEN in masked else masked
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    if isinstance(value, int | float | bool) or (isinstance(value, str) and "@" not in value):
        return value
    return _HIDDEN


_HS_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 3.2: the hash's size


def check_auth(settings: Settings) -> None:
    """JWT settings that would accept more than the operator meant: an HMAC secret too short
    for its algorithm, no audience, an unknown default tier."""
    j = settings.auth.jwt
    if j.secret is None and j.public_key is None:
        return
    if j.secret is not None:
        size = len(j.secret.get_secret_value().encode())
        for alg in j.algorithms:
            if size < _HS_MIN_BYTES.get(alg, 0):
                raise _bad("auth.jwt.secret", _HIDDEN, f"{alg} needs a secret of at least "
                           f"{_HS_MIN_BYTES[alg]} bytes (this one has {size})")  # fmt: skip
    if j.audience is None:
        raise _bad(
            "auth.jwt.audience",
            None,
            "set the audience ('aud') your tokens are issued for; 'none' accepts tokens for "
            "any audience (tokens minted for other services too)",
        )
    if j.default_tier is not None and j.default_tier not in settings.auth.tiers:
        raise _bad("auth.jwt.default_tier", j.default_tier, "no tier in auth.tiers has this name")


def check_limits(settings: Settings) -> None:
    """Limits kept in Redis need a Redis to keep them in."""
    if settings.limits.backend == "redis" and settings.redis.url is None:
        raise _bad("limits.backend", "redis", "redis.url is not set")


def check_registry(settings: Settings) -> None:
    """Cross-references of the registry: unique public names, and every name that a fallback,
    split or intent route mentions exists. Raises :class:`ConfigError` naming the key."""
    deployments: set[str] = set()
    public: dict[str, str] = {}  # public name -> the key that defined it

    def claim(name: str, key: str) -> None:
        if name in public:
            raise _bad(key, name, f"the name is already used by '{public[name]}'")
        public[name] = key

    for i, d in enumerate(settings.deployments):
        claim(d.name, f"deployments.{i}.name")
        if d.served_name is not None:
            raise _bad(f"deployments.{i}.served_name", d.served_name, "a deployment's `name` "
                       "is the name clients use")  # fmt: skip
        deployments.add(d.name)
        for j, alias in enumerate(d.aliases):
            if not re.match(_NAME, alias):
                raise _bad(f"deployments.{i}.aliases.{j}", alias, _NAME_RULE)
            claim(alias, f"deployments.{i}.aliases.{j}")
        if isinstance(d.replicas, int) and d.replicas < 1:
            raise _bad(f"deployments.{i}.replicas", d.replicas, "at least one replica is needed")
        count = len(d.replicas) if isinstance(d.replicas, list) else d.replicas
        if d.replica_labels and len(d.replica_labels) != count:
            raise _bad(f"deployments.{i}.replica_labels", d.replica_labels,
                       f"one label per replica ({count})")  # fmt: skip
        for j, label in enumerate(d.replica_labels):
            if not re.match(_NAME, label) or label in d.replica_labels[:j]:
                raise _bad(f"deployments.{i}.replica_labels.{j}", label,
                           f"labels are unique; {_NAME_RULE}")  # fmt: skip
        if isinstance(d.replicas, list):
            if not d.replicas:
                raise _bad(f"deployments.{i}.replicas", d.replicas, "list at least one URL")
            if d.engine not in ("openai", "vllm"):
                raise _bad(
                    f"deployments.{i}.replicas",
                    d.replicas,
                    f"a list of URLs needs engine 'openai' or 'vllm', not '{d.engine}'",
                )
            for j, url in enumerate(d.replicas):
                if not url.startswith(("http://", "https://")):
                    raise _bad(f"deployments.{i}.replicas.{j}", url, "not an http(s) URL")
                if url in d.replicas[:j]:
                    raise _bad(f"deployments.{i}.replicas.{j}", url, "listed twice")
    served = {d.name for d in settings.deployments} | {
        a for d in settings.deployments for a in d.aliases
    }
    for name, split in settings.routing.splits.items():
        if not re.match(_NAME, name):
            raise _bad(f"routing.splits.{name}", name, _NAME_RULE)
        claim(name, f"routing.splits.{name}")
        for arm, weight in split.arms.items():
            key = f"routing.splits.{name}.arms.{arm}"
            if arm not in served:
                raise _bad(key, arm, "no deployment or alias has this name")
            if not math.isfinite(weight) or weight <= 0:
                raise _bad(key, weight, "weights must be positive numbers")
    intent = settings.routing.intent
    if intent.routes:
        claim(intent.model, "routing.intent.model")
        for category, target in intent.routes.items():
            if target not in public or target == intent.model:
                raise _bad(
                    f"routing.intent.routes.{category}",
                    target,
                    "no deployment, alias or split has this name",
                )
        if intent.default not in intent.routes:
            raise _bad(
                "routing.intent.default", intent.default, "the default category needs a route"
            )
        for category, patterns in (intent.rules or {}).items():
            for j, pattern in enumerate(patterns):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise _bad(f"routing.intent.rules.{category}.{j}", pattern,
                               f"not a regular expression ({exc})") from None  # fmt: skip
        if intent.model_file is not None and not intent.model_file.is_file():
            raise _bad(
                "routing.intent.model_file",
                str(intent.model_file),
                "no such file (write one with `qwen-gateway intent train`)",
            )
    for i, d in enumerate(settings.deployments):
        for j, fallback in enumerate(d.fallbacks):
            key = f"deployments.{i}.fallbacks.{j}"
            if fallback not in served or fallback in (d.name, *d.aliases):
                raise _bad(key, fallback, "no other deployment or alias has this name")
    if (settings.routing.splits or intent.routes) and not settings.deployments:
        key = "routing.splits" if settings.routing.splits else "routing.intent.routes"
        raise _bad(key, "...", "routing needs the deployments it routes to ('deployments')")


def redacted(settings: Settings) -> dict[str, Any]:
    """The settings as plain data with secrets masked, for ``config show``."""
    data = settings.model_dump(mode="json")
    for name in ("api_key", "metrics_token"):
        if getattr(settings.server, name) is not None:
            data["server"][name] = _MASKED
    for section in ("database", "redis"):
        if data[section]["url"] is not None:
            data[section]["url"] = mask_url(getattr(settings, section).url.get_secret_value())
    if settings.auth.jwt.secret is not None:
        data["auth"]["jwt"]["secret"] = _MASKED
    _mask_model(data["model"])
    for shown in data["deployments"]:
        _mask_model(shown)
    return data


_MASKED = "**********"


def _mask_model(shown: dict[str, Any]) -> None:
    """Mask the secrets of a dumped ``model`` section or deployment, in place."""
    up, vllm = shown["upstream"], shown["vllm"]
    if up["api_key"] is not None:
        up["api_key"] = _MASKED
    up["base_url"] = mask_url(up["base_url"])
    if vllm["remote_url"] is not None:
        vllm["remote_url"] = mask_url(vllm["remote_url"])
    vllm["env"] = {name: _MASKED for name in vllm["env"]}
    args, secret_next = [], False
    for arg in vllm["extra_args"]:
        flag, eq, _ = arg.partition("=")
        if secret_next:
            arg = _MASKED
        elif eq and flag.startswith("-") and looks_secret(flag.lstrip("-")):
            arg = f"{flag}={_MASKED}"
        secret_next = arg.startswith("-") and not eq and looks_secret(arg.lstrip("-"))
        args.append(arg)
    vllm["extra_args"] = args
    shown["options"] = _mask_options(shown["options"])
    if isinstance(shown.get("replicas"), list):
        shown["replicas"] = [mask_url(url) for url in shown["replicas"]]


def _mask_options(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _MASKED if looks_secret(str(k)) else _mask_options(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_options(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value
