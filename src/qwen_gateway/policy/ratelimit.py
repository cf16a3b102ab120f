"""Rate limits and token budgets: requests and tokens per minute, concurrent requests, daily
and monthly token budgets, for each subject a request is charged to (its key, its model).

Windows are sliding minutes kept as per-second buckets; a request is checked against every
subject and charged to all of them only if all allow it (atomically, in Redis, by one Lua
script). Prompt tokens are charged up front, completion tokens when the request settles
(aborted streams included). Two implementations with the same rules: ``LocalLimiter`` (one
replica) and ``RedisLimiter`` (any number of replicas).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from qwen_gateway.errors import GatewayError, QuotaExceeded, RateLimited
from qwen_gateway.policy.principal import Limits

WINDOW = 60


@dataclass(frozen=True, slots=True)
class Subject:
    id: str  # "key:3", "jwt:alice", "model:qwen2.5-7b"
    limits: Limits


@dataclass(slots=True)
class Permit:
    subjects: tuple[Subject, ...]
    prompt_tokens: int
    lease: str = field(default_factory=lambda: secrets.token_hex(8))
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False


class Limiter(Protocol):
    async def acquire(self, subjects: Sequence[Subject], prompt_tokens: int) -> Permit: ...

    async def settle(self, permit: Permit, completion_tokens: int) -> None: ...

    async def renew(self, permits: Sequence[Permit]) -> None: ...

    async def aclose(self) -> None: ...


def duration(seconds: float) -> str:
    """OpenAI's reset format: '250ms', '59s', '1m0s'."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    whole = int(seconds + 0.999)
    if whole < 60:
        return f"{whole}s"
    return f"{whole // 60}m{whole % 60}s"


def _periods(now: float) -> tuple[str, str, float]:
    """(day, month, seconds until the next UTC midnight)."""
    t = datetime.fromtimestamp(now, UTC)
    midnight = (t + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return t.strftime("%Y%m%d"), t.strftime("%Y%m"), (midnight - t).total_seconds()


def _month_left(now: float) -> float:
    t = datetime.fromtimestamp(now, UTC)
    first = (t.replace(day=28) + timedelta(days=4)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    return (first - t).total_seconds()


def _refusal(
    code: int, subject: Subject, kind: str, retry_after: float, headers: dict[str, str]
) -> GatewayError:
    retry = {**headers, "Retry-After": str(max(1, int(retry_after + 0.999)))}
    who = "this key" if subject.id.startswith(("key:", "jwt:", "static")) else subject.id
    if code == 2:
        return QuotaExceeded(
            f"The {kind} token budget of {who} is used up; it renews in {duration(retry_after)}.",
            headers=retry,
        )
    if code == 3:
        return RateLimited(
            f"The request's prompt alone exceeds the tokens-per-minute limit of {who}.",
            code="rate_limit_exceeded",
            headers=headers,
        )
    what = {"requests": "requests per minute", "tokens": "tokens per minute",
            "concurrency": "concurrent requests"}[kind]  # fmt: skip
    return RateLimited(
        f"Rate limit reached for {what} on {who}. Retry after {duration(retry_after)}.",
        headers=retry,
    )


def _headers(
    limits: Limits, rem_req: int, rem_tok: int, reset_req: float, reset_tok: float
) -> dict[str, str]:
    out: dict[str, str] = {}
    if limits.rpm is not None:
        out["x-ratelimit-limit-requests"] = str(limits.rpm)
        out["x-ratelimit-remaining-requests"] = str(max(0, rem_req))
        out["x-ratelimit-reset-requests"] = duration(reset_req)
    if limits.tpm is not None:
        out["x-ratelimit-limit-tokens"] = str(limits.tpm)
        out["x-ratelimit-remaining-tokens"] = str(max(0, rem_tok))
        out["x-ratelimit-reset-tokens"] = duration(reset_tok)
    return out


# ---- one replica --------------------------------------------------------------


class LocalLimiter:
    def __init__(
        self, lease_seconds: float = 600.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._lease_seconds = lease_seconds
        self._requests: dict[str, dict[int, int]] = {}
        self._tokens: dict[str, dict[int, int]] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._budgets: dict[tuple[str, str], int] = {}

    def _window(self, table: dict[str, dict[int, int]], sid: str, now: int) -> tuple[int, float]:
        """(sum over the last minute, seconds until the oldest bucket leaves it)."""
        buckets = table.get(sid)
        if not buckets:
            return 0, 0.0
        for sec in [s for s in buckets if s <= now - WINDOW]:
            del buckets[sec]
        if not buckets:
            return 0, 0.0
        return sum(buckets.values()), min(buckets) + WINDOW - now

    def _live_leases(self, sid: str, now: float) -> dict[str, float]:
        leases = self._leases.setdefault(sid, {})
        for lease in [k for k, exp in leases.items() if exp <= now]:
            del leases[lease]
        return leases

    async def acquire(self, subjects: Sequence[Subject], prompt_tokens: int) -> Permit:
        now_f = self._clock()
        now = int(now_f)
        day, month, day_left = _periods(now_f)
        headers: dict[str, str] = {}
        for i, s in enumerate(subjects):
            lim = s.limits
            used_req, reset_req = self._window(self._requests, s.id, now)
            used_tok, reset_tok = self._window(self._tokens, s.id, now)
            h = _headers(
                lim,
                (lim.rpm or 0) - used_req - 1,
                (lim.tpm or 0) - used_tok - prompt_tokens,
                reset_req or WINDOW,
                reset_tok or WINDOW,
            )
            if i == 0:
                headers = h
            if (
                lim.daily_tokens is not None
                and self._budgets.get((s.id, day), 0) >= lim.daily_tokens
            ):
                raise _refusal(2, s, "daily", day_left, headers)
            if (
                lim.monthly_tokens is not None
                and self._budgets.get((s.id, month), 0) >= lim.monthly_tokens
            ):
                raise _refusal(2, s, "monthly", _month_left(now_f), headers)
            if lim.rpm is not None and used_req + 1 > lim.rpm:
                raise _refusal(1, s, "requests", reset_req, headers)
            if lim.tpm is not None:
                if prompt_tokens > lim.tpm:
                    raise _refusal(3, s, "tokens", 0, headers)
                if used_tok + prompt_tokens > lim.tpm:
                    raise _refusal(1, s, "tokens", reset_tok, headers)
            if lim.max_concurrency is not None and (
                len(self._live_leases(s.id, now_f)) >= lim.max_concurrency
            ):
                raise _refusal(1, s, "concurrency", 1.0, headers)
        permit = Permit(tuple(subjects), prompt_tokens, headers=headers)
        for s in subjects:
            lim = s.limits
            if lim.rpm is not None:
                b = self._requests.setdefault(s.id, {})
                b[now] = b.get(now, 0) + 1
            self._charge(s, now, day, month, prompt_tokens)
            if lim.max_concurrency is not None:
                self._live_leases(s.id, now_f)[permit.lease] = now_f + self._lease_seconds
        return permit

    def _charge(self, s: Subject, now: int, day: str, month: str, tokens: int) -> None:
        lim = s.limits
        if lim.tpm is not None and tokens:
            b = self._tokens.setdefault(s.id, {})
            b[now] = b.get(now, 0) + tokens
        if lim.daily_tokens is not None:
            self._budgets[(s.id, day)] = self._budgets.get((s.id, day), 0) + tokens
        if lim.monthly_tokens is not None:
            self._budgets[(s.id, month)] = self._budgets.get((s.id, month), 0) + tokens

    async def settle(self, permit: Permit, completion_tokens: int) -> None:
        if permit.settled:
            return
        permit.settled = True
        now_f = self._clock()
        day, month, _ = _periods(now_f)
        for s in permit.subjects:
            self._leases.get(s.id, {}).pop(permit.lease, None)
            self._charge(s, int(now_f), day, month, completion_tokens)

    async def renew(self, permits: Sequence[Permit]) -> None:
        """Extend the concurrency leases of running requests; an expired one stays expired."""
        now_f = self._clock()
        for permit in permits:
            for s in permit.subjects:
                leases = self._leases.get(s.id, {})
                if leases.get(permit.lease, now_f) > now_f:
                    leases[permit.lease] = now_f + self._lease_seconds

    async def aclose(self) -> None:
        return None


# ---- several replicas ---------------------------------------------------------

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local nowf = now + tonumber(t[2]) / 1000000
local prompt = tonumber(ARGV[1])
local lease = ARGV[2]
local lease_seconds = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local function window(key)
  local vals = redis.call('HGETALL', key)
  local sum, oldest = 0, nil
  for i = 1, #vals, 2 do
    local sec = tonumber(vals[i])
    if sec <= now - 60 then
      redis.call('HDEL', key, vals[i])
    else
      sum = sum + tonumber(vals[i + 1])
      if oldest == nil or sec < oldest then oldest = sec end
    end
  end
  if oldest == nil then return sum, 60 end
  return sum, oldest + 60 - now
end
local first = {}
for i = 0, n - 1 do
  local k = i * 5
  local rpm, tpm = tonumber(ARGV[5 + k]), tonumber(ARGV[6 + k])
  local conc, daily, monthly = tonumber(ARGV[7 + k]), tonumber(ARGV[8 + k]), tonumber(ARGV[9 + k])
  local used_req, reset_req = window(KEYS[1 + k])
  local used_tok, reset_tok = window(KEYS[2 + k])
  if i == 0 then first = {used_req, used_tok, reset_req, reset_tok} end
  local info = {i, used_req, used_tok, reset_req, reset_tok}
  if daily >= 0 and tonumber(redis.call('GET', KEYS[4 + k]) or '0') >= daily then
    return {2, 'daily', unpack(info)}
  end
  if monthly >= 0 and tonumber(redis.call('GET', KEYS[5 + k]) or '0') >= monthly then
    return {2, 'monthly', unpack(info)}
  end
  if rpm >= 0 and used_req + 1 > rpm then return {1, 'requests', unpack(info)} end
  if tpm >= 0 then
    if prompt > tpm then return {3, 'tokens', unpack(info)} end
    if used_tok + prompt > tpm then return {1, 'tokens', unpack(info)} end
  end
  if conc >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3 + k], '-inf', nowf)
    if redis.call('ZCARD', KEYS[3 + k]) >= conc then return {1, 'concurrency', unpack(info)} end
  end
end
for i = 0, n - 1 do
  local k = i * 5
  local rpm, tpm = tonumber(ARGV[5 + k]), tonumber(ARGV[6 + k])
  local conc, daily, monthly = tonumber(ARGV[7 + k]), tonumber(ARGV[8 + k]), tonumber(ARGV[9 + k])
  if rpm >= 0 then
    redis.call('HINCRBY', KEYS[1 + k], now, 1)
    redis.call('EXPIRE', KEYS[1 + k], 120)
  end
  if tpm >= 0 and prompt > 0 then
    redis.call('HINCRBY', KEYS[2 + k], now, prompt)
    redis.call('EXPIRE', KEYS[2 + k], 120)
  end
  if conc >= 0 then
    redis.call('ZADD', KEYS[3 + k], nowf + lease_seconds, lease)
    redis.call('EXPIRE', KEYS[3 + k], math.ceil(lease_seconds) + 60)
  end
  if daily >= 0 then
    redis.call('INCRBY', KEYS[4 + k], prompt)
    redis.call('EXPIRE', KEYS[4 + k], 2 * 86400)
  end
  if monthly >= 0 then
    redis.call('INCRBY', KEYS[5 + k], prompt)
    redis.call('EXPIRE', KEYS[5 + k], 32 * 86400)
  end
end
return {0, 'ok', 0, first[1], first[2], first[3], first[4]}
"""

_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local tokens = tonumber(ARGV[1])
local lease = ARGV[2]
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  local k = i * 5
  local tpm, conc = tonumber(ARGV[4 + i * 4]), tonumber(ARGV[5 + i * 4])
  local daily, monthly = tonumber(ARGV[6 + i * 4]), tonumber(ARGV[7 + i * 4])
  if conc >= 0 then redis.call('ZREM', KEYS[3 + k], lease) end
  if tokens > 0 then
    if tpm >= 0 then
      redis.call('HINCRBY', KEYS[2 + k], now, tokens)
      redis.call('EXPIRE', KEYS[2 + k], 120)
    end
    if daily >= 0 then redis.call('INCRBY', KEYS[4 + k], tokens) end
    if monthly >= 0 then redis.call('INCRBY', KEYS[5 + k], tokens) end
  end
end
return 0
"""


_RENEW = """
local t = redis.call('TIME')
local nowf = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease_seconds = tonumber(ARGV[1])
for i = 1, #KEYS do
  local score = redis.call('ZSCORE', KEYS[i], ARGV[i + 1])
  if score and tonumber(score) > nowf then
    redis.call('ZADD', KEYS[i], 'XX', nowf + lease_seconds, ARGV[i + 1])
    redis.call('EXPIRE', KEYS[i], math.ceil(lease_seconds) + 60)
  end
end
return 0
"""


def _n(value: int | None) -> int:
    return -1 if value is None else value


class RedisLimiter:
    def __init__(
        self, redis: Any, lease_seconds: float = 600.0, prefix: str = "qwen-gateway"
    ) -> None:
        self._prefix = f"{prefix}:limits"
        self._redis = redis
        self._lease_seconds = lease_seconds
        self._acquire = redis.register_script(_ACQUIRE)
        self._settle = redis.register_script(_SETTLE)
        self._renew = redis.register_script(_RENEW)

    def _keys(self, subjects: Sequence[Subject], now: float) -> list[str]:
        day, month, _ = _periods(now)
        keys: list[str] = []
        for s in subjects:
            base = f"{self._prefix}:{{{s.id}}}"  # one hash slot per subject
            keys += [f"{base}:req", f"{base}:tok", f"{base}:conc", f"{base}:d:{day}",
                     f"{base}:m:{month}"]  # fmt: skip
        return keys

    async def acquire(self, subjects: Sequence[Subject], prompt_tokens: int) -> Permit:
        now = time.time()
        permit = Permit(tuple(subjects), prompt_tokens)
        args: list[Any] = [prompt_tokens, permit.lease, self._lease_seconds, len(subjects)]
        for s in subjects:
            lim = s.limits
            args += [_n(lim.rpm), _n(lim.tpm), _n(lim.max_concurrency), _n(lim.daily_tokens),
                     _n(lim.monthly_tokens)]  # fmt: skip
        result = await self._acquire(keys=self._keys(subjects, now), args=args)
        code = int(result[0])
        kind = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
        index, used_req, used_tok = int(result[2]), int(result[3]), int(result[4])
        reset_req, reset_tok = float(result[5]), float(result[6])
        first = subjects[0].limits
        if code == 0:
            permit.headers = _headers(
                first, (first.rpm or 0) - used_req - 1, (first.tpm or 0) - used_tok - prompt_tokens,
                reset_req, reset_tok,
            )  # fmt: skip
            return permit
        subject = subjects[index]
        headers = (
            _headers(first, (first.rpm or 0) - used_req, (first.tpm or 0) - used_tok,
                     reset_req, reset_tok) if index == 0 else {}
        )  # fmt: skip
        if code == 2:
            _, _, day_left = _periods(now)
            raise _refusal(
                2, subject, kind, day_left if kind == "daily" else _month_left(now), headers
            )
        retry = {"requests": reset_req, "tokens": reset_tok}.get(kind, 1.0)
        raise _refusal(code, subject, kind, retry, headers)

    async def settle(self, permit: Permit, completion_tokens: int) -> None:
        if permit.settled:
            return
        permit.settled = True
        args: list[Any] = [completion_tokens, permit.lease, len(permit.subjects)]
        for s in permit.subjects:
            lim = s.limits
            args += [_n(lim.tpm), _n(lim.max_concurrency), _n(lim.daily_tokens),
                     _n(lim.monthly_tokens)]  # fmt: skip
        await self._settle(keys=self._keys(permit.subjects, time.time()), args=args)

    async def renew(self, permits: Sequence[Permit]) -> None:
        """Extend the concurrency leases of running requests, all in one call; an expired
        (or settled) lease stays gone."""
        keys: list[str] = []
        args: list[Any] = [self._lease_seconds]
        now = time.time()
        for permit in permits:
            for s in permit.subjects:
                if s.limits.max_concurrency is not None:
                    keys.append(self._keys([s], now)[2])
                    args.append(permit.lease)
        if keys:
            await self._renew(keys=keys, args=args)

    async def aclose(self) -> None:
        return None
