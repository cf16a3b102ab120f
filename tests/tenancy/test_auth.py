"""Keys, JWT, the admin API and attacks, through the HTTP API and the openai SDK, on SQLite and
on PostgreSQL."""

from __future__ import annotations

import secrets
import time
import warnings
from pathlib import Path
from typing import Any

import jwt
import openai
import pytest
import redis.asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from qwen_gateway.errors import AuthenticationFailed, RateLimited
from qwen_gateway.policy.auth import FailureThrottle
from qwen_gateway.policy.jwt import JWTConfig, JWTVerifier
from qwen_gateway.policy.keys import KeyManager, RedisBus
from qwen_gateway.store.keys import KeyRepository
from support.redis_outage import eventually, proxied_redis
from tenancy.helpers import ASK, admin_key, client, new_key, secured

SECRET = "a-test-signing-secret-of-32-bytes!!"


async def test_keys_through_the_sdk(tmp_path: Path, database_url: str) -> None:
    async with secured(tmp_path, database_url) as g:
        missing = await g.http.post(
            "/v1/chat/completions", json={"model": "scripted", "messages": ASK}
        )
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "missing_api_key"
        with pytest.raises(openai.AuthenticationError):
            await client(g, "sk-qg-not-a-real-key").models.list()
        key = await new_key(g, models=["scripted"])
        sdk = client(g, key)
        reply = await sdk.chat.completions.create(model="scripted", messages=ASK)  # type: ignore[arg-type]
        assert reply.choices[0].message.content
        with pytest.raises(openai.PermissionDeniedError):  # not on the key's allowlist
            await sdk.chat.completions.create(model="other", messages=ASK)  # type: ignore[arg-type]
        resp = await g.http.get("/admin/keys", headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code == 403
        assert resp.json()["error"]["type"] == "permission_error"


async def test_key_lifecycle_and_storage(tmp_path: Path, database_url: str) -> None:
    async with secured(tmp_path, database_url) as g:
        admin = {"Authorization": f"Bearer {await admin_key(g)}"}
        created = (await g.http.post("/admin/keys", json={"name": "svc"}, headers=admin)).json()
        key, key_id = created["key"], created["id"]
        assert key.startswith("sk-qg-") and created["prefix"] == key[:12] + "…"
        assert "key_hash" not in created
        stored = await g.container.store.keys.get(key_id)
        assert key not in repr(stored) and stored.key_hash != key  # only the SHA-256 is kept
        sdk = client(g, key)
        await sdk.models.list()
        rotated = (await g.http.post(f"/admin/keys/{key_id}/rotate", headers=admin)).json()
        with pytest.raises(openai.AuthenticationError):
            await sdk.models.list()  # the old secret stopped working at once
        await client(g, rotated["key"]).models.list()
        revoked = await g.http.post(f"/admin/keys/{key_id}/revoke", headers=admin)
        assert revoked.json()["status"] == "revoked"
        with pytest.raises(openai.AuthenticationError):
            await client(g, rotated["key"]).models.list()
        expired = await new_key(g, expires_at="2000-01-01T00:00:00Z")
        with pytest.raises(openai.AuthenticationError):
            await client(g, expired).models.list()
        assert (await g.http.get("/admin/keys/999999", headers=admin)).status_code == 404
        actions = [
            e["action"] for e in (await g.http.get("/admin/audit", headers=admin)).json()["data"]
        ]
        for action in ("key.create", "key.rotate", "key.revoke"):
            assert action in actions


async def test_an_admin_changes_a_keys_limits_and_they_apply_at_once(
    tmp_path: Path, database_url: str
) -> None:
    async with secured(tmp_path, database_url) as g:
        admin = {"Authorization": f"Bearer {await admin_key(g)}"}
        created = (
            await g.http.post("/admin/keys", json={"name": "svc", "rpm": 1}, headers=admin)
        ).json()
        sdk = client(g, created["key"])
        await sdk.chat.completions.create(model="scripted", messages=ASK)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError):
            await sdk.chat.completions.create(model="scripted", messages=ASK)  # type: ignore[arg-type]
        path = f"/admin/keys/{created['id']}"
        bad = await g.http.patch(path, json={"rpm": 0}, headers=admin)
        assert (bad.status_code, bad.json()["error"]["param"]) == (400, "rpm")
        unknown = await g.http.patch(path, json={"name": "x"}, headers=admin)
        assert unknown.status_code == 400
        updated = await g.http.patch(path, json={"rpm": None, "tpm": 10**6}, headers=admin)
        assert updated.status_code == 200
        assert (updated.json()["rpm"], updated.json()["tpm"]) == (None, 10**6)
        await sdk.chat.completions.create(model="scripted", messages=ASK)  # type: ignore[arg-type]
        missing = await g.http.patch("/admin/keys/999999", json={"rpm": 5}, headers=admin)
        assert missing.status_code == 404
        (event,) = (await g.http.get("/admin/audit?action=key.update", headers=admin)).json()[
            "data"
        ]
        assert event["target"] == f"key:{created['id']}"
        assert event["details"]["limits"] == {"rpm": [1, None], "tpm": [None, 10**6]}


HOSTILE = [
    "'; DROP TABLE api_keys; --",
    'Robert"); DELETE FROM usage_records;--',
    "密钥 🔑 <script>alert(1)</script>",
    '=HYPERLINK("http://evil")',
    "x" * 200,
]


async def test_hostile_names_are_stored_and_shown_safely(tmp_path: Path, database_url: str) -> None:
    async with secured(tmp_path, database_url) as g:
        admin = {"Authorization": f"Bearer {await admin_key(g)}"}
        ids = {}
        for name in HOSTILE:
            resp = await g.http.post("/admin/keys", json={"name": name}, headers=admin)
            assert resp.status_code == 201, resp.text
            ids[resp.json()["id"]] = name
        listed = {
            k["id"]: k["name"]
            for k in (await g.http.get("/admin/keys", headers=admin)).json()["data"]
        }
        for key_id, name in ids.items():
            assert listed[key_id] == name
        for bad in ("", "x" * 201, "tab\there", None, "a\u202eb", "a\u2067b", "a\x85b", "a\x9fb"):
            resp = await g.http.post("/admin/keys", json={"name": bad}, headers=admin)
            assert resp.status_code == 400, bad
        resp = await g.http.post("/admin/keys", json={"name": "n", "rpm": 0}, headers=admin)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "rpm"


async def test_bad_credentials_and_attacks(tmp_path: Path) -> None:
    async with secured(tmp_path, auth={"failure_limit": 5}) as g:
        key = await new_key(g)
        in_query = await g.http.get(f"/v1/models?api_key={key}")
        assert in_query.status_code == 401
        assert in_query.json()["error"]["code"] == "credentials_in_query"
        for header in ("Basic abc", "Bearer", "Bearer " + "x" * 10000, "Bearer sk-qg-wrong"):
            resp = await g.http.get("/v1/models", headers={"Authorization": header})
            assert resp.status_code in (401, 429), header
        # five failures from this address within the minute: its failures are slowed down
        resp = await g.http.get("/v1/models", headers={"Authorization": "Bearer sk-qg-wrong"})
        assert resp.status_code == 429
        assert int(resp.headers["retry-after"]) >= 1
        await g.container.store.writer.flush()
        failures = await g.container.store.audit.recent(100, "auth.failure")
        assert failures and all(f["client"] == "127.0.0.1" for f in failures)
        assert all(key not in str(f) for f in failures)  # no credential in the trail


async def test_failures_from_an_address_never_lock_out_a_valid_key(tmp_path: Path) -> None:
    async with secured(tmp_path) as g:  # the default limit: 20 failures per address and minute
        key = await new_key(g)
        wrong = [
            (await g.http.get("/v1/models", headers={"Authorization": f"Bearer sk-qg-wrong{i}"}))
            for i in range(21)
        ]
        assert [r.status_code for r in wrong] == [401] * 20 + [429]
        good = await g.http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert good.status_code == 200
        again = await g.http.get("/v1/models", headers={"Authorization": "Bearer sk-qg-wrong"})
        assert again.status_code == 429
        assert again.json()["error"]["code"] == "too_many_auth_failures"


def test_a_full_failure_table_drops_the_oldest_address_only() -> None:
    now = [0.0]
    throttle = FailureThrottle(2, clock=lambda: now[0], max_clients=3)
    for address in ("a", "b", "a", "c"):
        throttle.fail(address)
        now[0] += 1
    throttle.fail("d")  # four addresses: "b" failed least recently and is dropped
    with pytest.raises(RateLimited):
        throttle.fail("a")  # its two failures were kept
    throttle.fail("b")
    throttle.fail("b")
    with pytest.raises(RateLimited):
        throttle.fail("b")


def _token(claims: dict[str, Any], key: Any = SECRET, alg: str = "HS256") -> str:
    base = {"sub": "alice", "exp": int(time.time()) + 300, "aud": "qwen", "iss": "https://idp"}
    return jwt.encode({**base, **claims}, key, algorithm=alg)


async def test_jwt_principals(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = (
        rsa_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    jwt_cfg = {"secret": SECRET, "issuer": "https://idp", "audience": "qwen",
               "default_tier": "standard"}  # fmt: skip
    tiers = {"small": {"rpm": 1}, "standard": {}}
    async with secured(tmp_path, auth={"jwt": jwt_cfg, "tiers": tiers}) as g:
        ok = client(g, _token({"models": ["scripted"]}))
        assert (await ok.chat.completions.create(model="scripted", messages=ASK)).choices  # type: ignore[arg-type]
        with pytest.raises(openai.PermissionDeniedError):
            await ok.chat.completions.create(model="other", messages=ASK)  # type: ignore[arg-type]
        small = client(g, _token({"sub": "bob", "tier": "small"}))
        await small.chat.completions.create(model="scripted", messages=ASK)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError):
            await small.chat.completions.create(model="scripted", messages=ASK)  # type: ignore[arg-type]
        now = int(time.time())
        bad = {
            "expired": _token({"exp": now - 3600}),
            "not yet valid": _token({"nbf": now + 3600}),
            "wrong audience": _token({"aud": "someone-else"}),
            "wrong issuer": _token({"iss": "https://evil"}),
            "forged": _token({}, key="another-secret-of-32-bytes-length!!"),
            "alg none": jwt.encode({"sub": "x", "exp": now + 60}, None, algorithm="none"),  # type: ignore[arg-type]
            "malformed": "eyJhbGciOi.bad.token",
            "unknown tier": _token({"tier": "platinum"}),
            "no subject": _token({"sub": ""}),
        }
        for what, token in bad.items():
            resp = await g.http.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 401, what
    jwt_cfg = {"public_key": pem, "audience": "qwen", "algorithms": ["RS256"]}
    async with secured(tmp_path / "rs", auth={"jwt": jwt_cfg}) as g:
        assert (await client(g, _token({}, rsa_key, "RS256")).models.list()).data
        with pytest.raises(openai.AuthenticationError):  # right claims, wrong key type
            await client(g, _token({}, ec_key, "ES256")).models.list()


async def test_first_start_creates_an_admin_key_and_no_auth_serves_all(tmp_path: Path) -> None:
    async with secured(tmp_path) as g:
        key = g.container.bootstrap_key
        assert key is not None and key.startswith("sk-qg-")
        assert (
            await g.http.get("/admin/keys", headers={"Authorization": f"Bearer {key}"})
        ).status_code == 200
    async with secured(tmp_path) as g:  # the same database: no second admin key
        assert g.container.bootstrap_key is None
    async with secured(tmp_path / "open", auth={"enabled": False}) as g:
        assert g.container.bootstrap_key is None
        assert (await g.http.get("/v1/models")).status_code == 200


async def test_revoke_and_rotate_during_a_redis_outage_commit_answer_200_and_are_audited(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    with proxied_redis(redis_url) as (proxy, url):
        async with secured(tmp_path, database_url, url, limits={"redis_prefix": prefix}) as g:
            admin = {"Authorization": f"Bearer {await admin_key(g)}"}
            victim, other = [
                (await g.http.post("/admin/keys", json={"name": n}, headers=admin)).json()
                for n in ("victim", "other")
            ]
            proxy.down()  # the invalidation cannot be announced
            revoked = await g.http.post(f"/admin/keys/{victim['id']}/revoke", headers=admin)
            assert revoked.status_code == 200, revoked.text
            assert revoked.json()["status"] == "revoked"
            rotated = await g.http.post(f"/admin/keys/{other['id']}/rotate", headers=admin)
            assert rotated.status_code == 200, rotated.text
            with pytest.raises(openai.AuthenticationError):
                await client(g, victim["key"]).models.list()
            await g.container.store.writer.flush()
            for action, key in (("key.revoke", victim), ("key.rotate", other)):
                events = await g.container.store.audit.recent(100, action)
                assert f"key:{key['id']}" in [e["target"] for e in events], action
            proxy.up()


async def test_the_invalidation_listener_resubscribes_after_a_redis_outage(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    channel = f"{prefix}:key-invalidations"  # namespaced by limits.redis_prefix
    direct = redis.asyncio.from_url(redis_url)

    async def subscribers() -> int:
        return int((await direct.pubsub_numsub(channel))[0][1])

    async def one() -> bool:
        return await subscribers() == 1

    async def both() -> bool:
        return await subscribers() == 2

    with proxied_redis(redis_url) as (proxy, url):
        async with secured(tmp_path, database_url, redis_url, limits={"redis_prefix": prefix}) as g:
            await eventually(one, "this gateway subscribed")  # SUBSCRIBE is not acknowledged
            behind_proxy = redis.asyncio.from_url(url)
            bus = RedisBus(behind_proxy, prefix, backoff=(0.05, 0.5))
            # another replica; its clock stands still, so only an invalidation empties its cache
            replica = KeyManager(KeyRepository(g.container.store.db), bus, clock=lambda: 0)
            await replica.start()
            await eventually(both, "the replica subscribed")
            secret, record = await g.container.store.keys.create("victim")
            assert await replica.lookup(secret) is not None  # cached now
            proxy.down()
            await eventually(one, "the replica's subscription was cut")
            proxy.up()
            await eventually(both, "the replica resubscribed")
            await g.container.store.keys.revoke(record.id)

            async def forgotten() -> bool:
                return await replica.lookup(secret) is None

            await eventually(forgotten, "the revocation reached the replica")
            await replica.aclose()
            await behind_proxy.aclose()
    await direct.aclose()


async def _status(g: Any, token: str, path: str = "/v1/models") -> int:
    resp = await g.http.get(path, headers={"Authorization": f"Bearer {token}"})
    return int(resp.status_code)


async def test_jwt_admin_only_through_a_configured_claim(tmp_path: Path) -> None:
    jwt_cfg = {"secret": SECRET, "audience": "qwen"}
    async with secured(tmp_path / "off", auth={"jwt": jwt_cfg}) as g:
        assert await _status(g, _token({"admin": True}), "/admin/keys") == 403
    async with secured(tmp_path / "on", auth={"jwt": {**jwt_cfg, "admin_claim": "gw_admin"}}) as g:
        assert await _status(g, _token({"admin": True}), "/admin/keys") == 403
        assert await _status(g, _token({"gw_admin": "yes"}), "/admin/keys") == 403
        assert await _status(g, _token({"gw_admin": True}), "/admin/keys") == 200


async def test_jwt_audience_none_accepts_tokens_for_any_audience(tmp_path: Path) -> None:
    async with secured(tmp_path, auth={"jwt": {"secret": SECRET, "audience": "none"}}) as g:
        assert await _status(g, _token({"aud": "some-other-service"})) == 200


async def test_a_token_without_a_tier_gets_the_default_or_is_refused(tmp_path: Path) -> None:
    jwt_cfg = {"secret": SECRET, "audience": "qwen"}
    tiers = {"free": {"rpm": 2}}
    async with secured(tmp_path / "strict", auth={"jwt": jwt_cfg, "tiers": tiers}) as g:
        assert await _status(g, _token({"tier": "free"})) == 200
        assert await _status(g, _token({})) == 401
        assert await _status(g, _token({"tier": None})) == 401
    jwt_cfg["default_tier"] = "free"
    async with secured(tmp_path / "default", auth={"jwt": jwt_cfg, "tiers": tiers}) as g:
        untiered = client(g, _token({"tier": None}))
        for _ in range(2):
            await untiered.chat.completions.create(model="scripted", messages=ASK)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError):  # the default tier's limits apply
            await untiered.chat.completions.create(model="scripted", messages=ASK)  # type: ignore[arg-type]


async def test_long_lived_tokens_and_unprintable_subjects_are_refused(tmp_path: Path) -> None:
    jwt_cfg = {"secret": SECRET, "audience": "qwen", "max_lifetime_seconds": 3600}
    now = int(time.time())
    async with secured(tmp_path, auth={"jwt": jwt_cfg}) as g:
        assert await _status(g, _token({"exp": now + 3000, "iat": now - 60})) == 200
        assert await _status(g, _token({"sub": "alice@example.com / 张三"})) == 200
        assert await _status(g, _token({"exp": 253402300799})) == 401  # year 9999
        assert await _status(g, _token({"exp": now + 3000, "iat": now - 7200})) == 401
        for subject in ("a\u202eb", "a\u2066b", "a\x85b", "a\x00b", "a\nb", "a\x7fb"):
            assert await _status(g, _token({"sub": subject})) == 401, repr(subject)


def test_a_short_hmac_secret_is_refused_without_a_warning_on_stderr() -> None:
    short = "short-secret-23-bytes!!"  # the settings refuse it; the verifier refuses it too
    verifier = JWTVerifier(JWTConfig(secret=short, audience="qwen"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        token = jwt.encode({"sub": "a", "exp": int(time.time()) + 60, "aud": "qwen"}, short)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(AuthenticationFailed):
            verifier.principal(token)
    assert not caught


async def test_metrics_can_require_a_token_or_an_admin_key(tmp_path: Path) -> None:
    server = {"metrics_auth": True, "metrics_token": "scrape-token"}
    async with secured(tmp_path, server=server) as g:
        admin, inference = await admin_key(g), await new_key(g)

        async def status(key: str | None) -> int:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return int((await g.http.get("/metrics", headers=headers)).status_code)

        assert await status(None) == 401
        assert await status("wrong-token") == 401
        assert await status(inference) == 403
        assert await status("scrape-token") == 200
        assert await status(admin) == 200
    async with secured(tmp_path / "open") as g:  # the default: open, for a private Prometheus
        assert await status(None) == 200


async def test_a_key_sees_only_the_models_it_may_use(tmp_path: Path) -> None:
    async with secured(tmp_path) as g:
        limited = client(g, await new_key(g, models=["scripted"]))
        assert [m.id for m in (await limited.models.list()).data] == ["scripted"]
        assert (await limited.models.retrieve("scripted")).id == "scripted"
        with pytest.raises(openai.PermissionDeniedError):
            await limited.models.retrieve("other")
        every = client(g, await new_key(g))
        assert {m.id for m in (await every.models.list()).data} == {"scripted", "other"}


async def test_out_of_range_key_ids_are_not_found(tmp_path: Path, database_url: str) -> None:
    async with secured(tmp_path, database_url) as g:
        admin = {"Authorization": f"Bearer {await admin_key(g)}"}
        for key_id in ("9999999999", "99999999999999999999", "9223372036854775808", "0", "-1"):
            for method, path in (("GET", ""), ("POST", "/revoke"), ("POST", "/rotate")):
                resp = await g.http.request(method, f"/admin/keys/{key_id}{path}", headers=admin)
                assert resp.status_code == 404, (key_id, path, resp.text)


async def test_key_limits_beyond_their_columns_are_400s(tmp_path: Path, database_url: str) -> None:
    async with secured(tmp_path, database_url) as g:
        admin = {"Authorization": f"Bearer {await admin_key(g)}"}
        for field, value in (("rpm", 2**31), ("max_concurrency", 2**40), ("daily_tokens", 2**63)):
            resp = await g.http.post(
                "/admin/keys", json={"name": "big", field: value}, headers=admin
            )
            assert resp.status_code == 400, (field, resp.text)
            assert resp.json()["error"]["param"] == field
        largest = {"name": "big", "rpm": 2**31 - 1, "daily_tokens": 2**63 - 1}
        assert (await g.http.post("/admin/keys", json=largest, headers=admin)).status_code == 201
