"""Rate limits and token budgets: requests and tokens per minute, concurrent sequences, daily
and monthly token budgets, for each subject a request is charged to (its key, its model).

Windows are sliding minutes kept as per-second buckets; a request is checked against every
subject and charged to all of them only if all allow it (atomically, in Redis, by one Lua
script). Admission charges the prompt plus the completion it may produce (``reserve``: n ×
its effective max_tokens) and refuses what does not fit; settling charges the real usage
(``permit.prompt_tokens`` + the completion tokens) and refunds the rest, so the counters end
equal to the usage records. A request holds one concurrency slot per sequence (``n``). Two
implementations with the same rules: ``LocalLimiter`` (one replica) and ``RedisLimiter`` (any
number of replicas).
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
    #: Counted for every caller together (a model's limits): its counters are not shown to
    #: the caller in x-ratelimit-* headers.
    shared: bool = False


@dataclass(slots=True)
class Permit:
    subjects: tuple[Subject, ...]
    #: The prompt's tokens: as counted at admission, then the real count once the request has
    #: ended (0 when it failed before an engine took it), which settling charges.
    prompt_tokens: int
    charged: int = 0  # tokens charged at admission: the prompt and the completion reserved
    sequences: int = 1  # concurrency slots held: one per choice (``n``)
    lease: str = field(default_factory=lambda: secrets.token_hex(8))
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False
    second: int = 0  # the window second (the limiter's clock) admission charged
    at: float = field(default_factory=time.time)  # when: the day and month it charged


class Limiter(Protocol):
    async def acquire(
        self, subjects: Sequence[Subject], prompt_tokens: int, reserve: int = 0,
        sequences: int = 1,
    ) -> Permit: ...  # fmt: skip

    async def settle(self, permit: Permit, completion_tokens: int) -> None: ...

    async def release(self, permit: Permit) -> None:
        """Undo the admission (its request, tokens and slots): another deployment serves."""

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
    code: int, subject: Subject, kind: str, retry_after: float, headers: dict[str, str],
    wanted: int = 0, used: int = 0,
) -> GatewayError:  # fmt: skip
    """The error for a refusal: 1 retry later, 2 a budget, 3 never fits this subject."""
    retry = {**headers, "Retry-After": str(max(1, int(retry_after + 0.999)))}
    who = subject.id if subject.shared else "this key"
    lim = subject.limits
    if code == 2:
        budget = (lim.daily_tokens if kind == "daily" else lim.monthly_tokens) or 0
        if wanted > budget:
            return QuotaExceeded(
                f"This request may use {wanted} tokens (its prompt and n × max_tokens), more "
                f"than the whole {kind} token budget of {who} ({budget}); lower max_tokens.",
                headers=headers,
            )
        left = max(0, budget - used)
        state = "is used up" if left == 0 else (
            f"has {left} tokens left, fewer than this request may use ({wanted}: its prompt "
            "and n × max_tokens)"
        )  # fmt: skip
        return QuotaExceeded(
            f"The {kind} token budget of {who} {state}; it renews in {duration(retry_after)}.",
            headers=retry,
        )
    if code == 3:
        if kind == "concurrency":
            msg = (f"The request's {wanted} choices (n) exceed the {lim.max_concurrency} "
                   f"concurrent sequences allowed to {who}.")  # fmt: skip
        else:
            msg = (f"The request may use {wanted} tokens (its prompt and n × max_tokens), "
                   f"more than the tokens-per-minute limit of {who} ({lim.tpm}); lower "
                   "max_tokens.")  # fmt: skip
        return RateLimited(msg, code="rate_limit_exceeded", headers=headers)
    what = {"requests": "requests per minute", "tokens": "tokens per minute",
            "concurrency": "concurrent requests"}[kind]  # fmt: skip
    return RateLimited(
        f"Rate limit reached for {what} on {who}. Retry after {duration(retry_after)}.",
        headers=retry,
    )


def _headers(
    subject: Subject | None, rem_req: int, rem_tok: int, reset_req: float, reset_tok: float
) -> dict[str, str]:
    """x-ratelimit-* for the caller's own limits; none for a model's shared counters."""
    out: dict[str, str] = {}
    if subject is None or subject.shared:
        return out
    limits = subject.limits
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
        #: subject -> lease -> (expiry, sequences)
        self._leases: dict[str, dict[str, tuple[float, int]]] = {}
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

    def _live_leases(self, sid: str, now: float) -> dict[str, tuple[float, int]]:
        leases = self._leases.setdefault(sid, {})
        for lease in [k for k, (exp, _) in leases.items() if exp <= now]:
            del leases[lease]
        return leases

    async def acquire(
        self, subjects: Sequence[Subject], prompt_tokens: int, reserve: int = 0,
        sequences: int = 1,
    ) -> Permit:  # fmt: skip
        now_f = self._clock()
        now = int(now_f)
        day, month, day_left = _periods(now_f)
        charge = prompt_tokens + reserve
        first = next((s for s in subjects if not s.shared), None)
        headers: dict[str, str] = {}
        for s in subjects:
            lim = s.limits
            used_req, reset_req = self._window(self._requests, s.id, now)
            used_tok, reset_tok = self._window(self._tokens, s.id, now)
            if s is first:
                headers = _headers(
                    s, (lim.rpm or 0) - used_req - 1, (lim.tpm or 0) - used_tok - charge,
                    reset_req or WINDOW, reset_tok or WINDOW,
                )  # fmt: skip
            shown = headers if s is first else {}
            for kind, budget, period, left in (
                ("daily", lim.daily_tokens, day, day_left),
                ("monthly", lim.monthly_tokens, month, _month_left(now_f)),
            ):
                used = self._budgets.get((s.id, period), 0)
                if budget is not None and used + charge > budget:
                    raise _refusal(2, s, kind, left, shown, charge, used)
            if lim.rpm is not None and used_req + 1 > lim.rpm:
                raise _refusal(1, s, "requests", reset_req, shown)
            if lim.tpm is not None:
                if charge > lim.tpm:
                    raise _refusal(3, s, "tokens", 0, shown, charge)
                if used_tok + charge > lim.tpm:
                    raise _refusal(1, s, "tokens", reset_tok, shown)
            if lim.max_concurrency is not None:
                if sequences > lim.max_concurrency:
                    raise _refusal(3, s, "concurrency", 0, shown, sequences)
                held = sum(n for _, n in self._live_leases(s.id, now_f).values())
                if held + sequences > lim.max_concurrency:
                    raise _refusal(1, s, "concurrency", 1.0, shown)
        permit = Permit(tuple(subjects), prompt_tokens, charge, sequences, headers=headers,
                        second=now, at=now_f)  # fmt: skip
        for s in subjects:
            lim = s.limits
            if lim.rpm is not None:
                b = self._requests.setdefault(s.id, {})
                b[now] = b.get(now, 0) + 1
            self._charge(s, now, day, month, charge)
            if lim.max_concurrency is not None:
                expiry = now_f + self._lease_seconds
                self._live_leases(s.id, now_f)[permit.lease] = (expiry, sequences)
        return permit

    def _charge(self, s: Subject, second: int, day: str, month: str, tokens: int) -> None:
        """Add ``tokens`` (a refund when negative, never below zero) to the subject's
        counters: the minute's bucket ``second``, the budgets of ``day`` and ``month``."""
        lim = s.limits
        counters: list[tuple[dict[Any, int], Any]] = []
        if lim.tpm is not None:
            counters.append((self._tokens.setdefault(s.id, {}), second))
        if lim.daily_tokens is not None:
            counters.append((self._budgets, (s.id, day)))
        if lim.monthly_tokens is not None:
            counters.append((self._budgets, (s.id, month)))
        for table, key in counters:
            if tokens > 0:
                table[key] = table.get(key, 0) + tokens
            elif key in table:  # a bucket that has left its window keeps nothing to refund
                table[key] = max(0, table[key] + tokens)

    async def settle(self, permit: Permit, completion_tokens: int) -> None:
        if permit.settled:
            return
        permit.settled = True
        delta = permit.prompt_tokens + completion_tokens - permit.charged
        day, month, _ = _periods(permit.at)
        for s in permit.subjects:
            self._leases.get(s.id, {}).pop(permit.lease, None)
            # more than charged (not expected): the excess goes to the current minute
            second = int(self._clock()) if delta > 0 else permit.second
            self._charge(s, second, day, month, delta)

    async def release(self, permit: Permit) -> None:
        if permit.settled:
            return
        permit.settled = True
        day, month, _ = _periods(permit.at)
        for s in permit.subjects:
            self._leases.get(s.id, {}).pop(permit.lease, None)
            self._charge(s, permit.second, day, month, -permit.charged)
            requests = self._requests.get(s.id, {})
            if requests.get(permit.second):
                requests[permit.second] -= 1

    async def renew(self, permits: Sequence[Permit]) -> None:
        """Extend the concurrency leases of running requests; an expired one stays expired."""
        now_f = self._clock()
        for permit in permits:
            for s in permit.subjects:
                leases = self._leases.get(s.id, {})
                held = leases.get(permit.lease)
                if held is not None and held[0] > now_f:
                    leases[permit.lease] = (now_f + self._lease_seconds, held[1])

    async def aclose(self) -> None:
        return None


# ---- several replicas ---------------------------------------------------------

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local nowf = now + tonumber(t[2]) / 1000000
local charge = tonumber(ARGV[1])
local lease = ARGV[2]
local lease_seconds = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local seqs = tonumber(ARGV[5])
local shown = tonumber(ARGV[6])
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
local first = {0, 0, 60, 60}
for i = 0, n - 1 do
  local k = i * 5
  local rpm, tpm = tonumber(ARGV[7 + k]), tonumber(ARGV[8 + k])
  local conc, daily, monthly = tonumber(ARGV[9 + k]), tonumber(ARGV[10 + k]), tonumber(ARGV[11 + k])
  local used_req, reset_req = window(KEYS[1 + k])
  local used_tok, reset_tok = window(KEYS[2 + k])
  if i == shown then first = {used_req, used_tok, reset_req, reset_tok} end
  local info = {i, used_req, used_tok, reset_req, reset_tok}
  local used_day = tonumber(redis.call('GET', KEYS[4 + k]) or '0')
  if daily >= 0 and used_day + charge > daily then
    return {2, 'daily', i, used_req, used_tok, reset_req, reset_tok, used_day}
  end
  local used_month = tonumber(redis.call('GET', KEYS[5 + k]) or '0')
  if monthly >= 0 and used_month + charge > monthly then
    return {2, 'monthly', i, used_req, used_tok, reset_req, reset_tok, used_month}
  end
  if rpm >= 0 and used_req + 1 > rpm then return {1, 'requests', unpack(info)} end
  if tpm >= 0 then
    if charge > tpm then return {3, 'tokens', unpack(info)} end
    if used_tok + charge > tpm then return {1, 'tokens', unpack(info)} end
  end
  if conc >= 0 then
    if seqs > conc then return {3, 'concurrency', unpack(info)} end
    redis.call('ZREMRANGEBYSCORE', KEYS[3 + k], '-inf', nowf)
    if redis.call('ZCARD', KEYS[3 + k]) + seqs > conc then
      return {1, 'concurrency', unpack(info)}
    end
  end
end
for i = 0, n - 1 do
  local k = i * 5
  local rpm, tpm = tonumber(ARGV[7 + k]), tonumber(ARGV[8 + k])
  local conc, daily, monthly = tonumber(ARGV[9 + k]), tonumber(ARGV[10 + k]), tonumber(ARGV[11 + k])
  if rpm >= 0 then
    redis.call('HINCRBY', KEYS[1 + k], now, 1)
    redis.call('EXPIRE', KEYS[1 + k], 120)
  end
  if tpm >= 0 and charge > 0 then
    redis.call('HINCRBY', KEYS[2 + k], now, charge)
    redis.call('EXPIRE', KEYS[2 + k], 120)
  end
  if conc >= 0 then
    for j = 1, seqs do  -- one member per sequence: '<lease>:<j>'
      redis.call('ZADD', KEYS[3 + k], nowf + lease_seconds, lease .. ':' .. j)
    end
    redis.call('EXPIRE', KEYS[3 + k], math.ceil(lease_seconds) + 60)
  end
  if daily >= 0 then
    redis.call('INCRBY', KEYS[4 + k], charge)
    redis.call('EXPIRE', KEYS[4 + k], 2 * 86400)
  end
  if monthly >= 0 then
    redis.call('INCRBY', KEYS[5 + k], charge)
    redis.call('EXPIRE', KEYS[5 + k], 32 * 86400)
  end
end
return {0, 'ok', now, first[1], first[2], first[3], first[4]}
"""

# Settle (refund_request 0) or release (1) a permit: free its slots, and move its charge by
# delta tokens (a refund from the admission's bucket and budgets, an excess to this minute).
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local delta = tonumber(ARGV[1])
local lease = ARGV[2]
local n = tonumber(ARGV[3])
local seqs = tonumber(ARGV[4])
local second = ARGV[5]
local refund_request = tonumber(ARGV[6])
-- once per permit: a settle retried after a lost reply must not refund (or charge) again
if not redis.call('SET', KEYS[#KEYS], 1, 'NX', 'EX', 172800) then return 1 end
local function refund(key, field, tokens)
  local v = tonumber((field and redis.call('HGET', key, field)) or
                     (not field and redis.call('GET', key)) or '0')
  local take = math.min(v, tokens)
  if take <= 0 then return end
  if field then redis.call('HINCRBY', key, field, -take) else redis.call('DECRBY', key, take) end
end
for i = 0, n - 1 do
  local k = i * 5
  local tpm, conc = tonumber(ARGV[7 + i * 4]), tonumber(ARGV[8 + i * 4])
  local daily, monthly = tonumber(ARGV[9 + i * 4]), tonumber(ARGV[10 + i * 4])
  if conc >= 0 then
    for j = 1, seqs do redis.call('ZREM', KEYS[3 + k], lease .. ':' .. j) end
  end
  if refund_request > 0 then refund(KEYS[1 + k], second, 1) end
  if delta > 0 then
    if tpm >= 0 then
      redis.call('HINCRBY', KEYS[2 + k], now, delta)
      redis.call('EXPIRE', KEYS[2 + k], 120)
    end
    if daily >= 0 then redis.call('INCRBY', KEYS[4 + k], delta) end
    if monthly >= 0 then redis.call('INCRBY', KEYS[5 + k], delta) end
  elseif delta < 0 then
    if tpm >= 0 then refund(KEYS[2 + k], second, -delta) end
    if daily >= 0 then refund(KEYS[4 + k], nil, -delta) end
    if monthly >= 0 then refund(KEYS[5 + k], nil, -delta) end
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

    async def acquire(
        self, subjects: Sequence[Subject], prompt_tokens: int, reserve: int = 0,
        sequences: int = 1,
    ) -> Permit:  # fmt: skip
        permit = Permit(tuple(subjects), prompt_tokens, prompt_tokens + reserve, sequences)
        charge, now = permit.charged, permit.at
        shown = next((i for i, s in enumerate(subjects) if not s.shared), -1)
        args: list[Any] = [charge, permit.lease, self._lease_seconds, len(subjects), sequences,
                           shown]  # fmt: skip
        for s in subjects:
            lim = s.limits
            args += [_n(lim.rpm), _n(lim.tpm), _n(lim.max_concurrency), _n(lim.daily_tokens),
                     _n(lim.monthly_tokens)]  # fmt: skip
        result = await self._acquire(keys=self._keys(subjects, now), args=args)
        code = int(result[0])
        kind = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
        index, used_req, used_tok = int(result[2]), int(result[3]), int(result[4])
        reset_req, reset_tok = float(result[5]), float(result[6])
        mine = subjects[shown] if shown >= 0 else None
        lim = mine.limits if mine is not None else Limits()
        if code == 0:
            permit.second = index
            permit.headers = _headers(
                mine, (lim.rpm or 0) - used_req - 1, (lim.tpm or 0) - used_tok - charge,
                reset_req, reset_tok,
            )  # fmt: skip
            return permit
        subject = subjects[index]
        headers = (
            _headers(mine, (lim.rpm or 0) - used_req, (lim.tpm or 0) - used_tok,
                     reset_req, reset_tok) if index == shown else {}
        )  # fmt: skip
        if code == 2:
            _, _, day_left = _periods(now)
            left = day_left if kind == "daily" else _month_left(now)
            raise _refusal(2, subject, kind, left, headers, charge, int(result[7]))
        if code == 3:
            raise _refusal(3, subject, kind, 0, headers, sequences if kind == "concurrency"
                           else charge)  # fmt: skip
        retry = {"requests": reset_req, "tokens": reset_tok}.get(kind, 1.0)
        raise _refusal(code, subject, kind, retry, headers)

    async def _finish(self, permit: Permit, delta: int, refund_request: bool) -> None:
        if permit.settled:
            return
        permit.settled = True
        args: list[Any] = [delta, permit.lease, len(permit.subjects), permit.sequences,
                           permit.second, int(refund_request)]  # fmt: skip
        for s in permit.subjects:
            lim = s.limits
            args += [_n(lim.tpm), _n(lim.max_concurrency), _n(lim.daily_tokens),
                     _n(lim.monthly_tokens)]  # fmt: skip
        keys = self._keys(permit.subjects, permit.at)
        done = f"{self._prefix}:{{{permit.subjects[0].id}}}:done:{permit.lease}"
        await self._settle(keys=[*keys, done], args=args)

    async def settle(self, permit: Permit, completion_tokens: int) -> None:
        delta = permit.prompt_tokens + completion_tokens - permit.charged
        await self._finish(permit, delta, refund_request=False)

    async def release(self, permit: Permit) -> None:
        await self._finish(permit, -permit.charged, refund_request=True)

    async def renew(self, permits: Sequence[Permit]) -> None:
        """Extend the concurrency leases of running requests, all in one call; an expired
        (or settled) lease stays gone."""
        keys: list[str] = []
        args: list[Any] = [self._lease_seconds]
        now = time.time()
        for permit in permits:
            for s in permit.subjects:
                if s.limits.max_concurrency is not None:
                    conc = self._keys([s], now)[2]
                    for j in range(1, permit.sequences + 1):  # members '<lease>:<j>'
                        keys.append(conc)
                        args.append(f"{permit.lease}:{j}")
        if keys:
            await self._renew(keys=keys, args=args)

    async def aclose(self) -> None:
        return None
