"""Bearer JWTs: HS256 with a shared secret, or RS256/ES256 with a public key (PyJWT).

exp and nbf are always checked (with a little leeway), iss and aud when configured, and a
token may live at most ``max_lifetime`` seconds. Claims map to a principal: ``sub`` names it, a
models claim limits the models, a tier claim picks a configured set of limits (a token without
one gets ``default_tier``, and is refused when tiers are configured without a default), and an
admin claim, only when one is configured, makes it an admin.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qwen_gateway.errors import AuthenticationFailed
from qwen_gateway.policy.principal import Limits, Principal


@dataclass(frozen=True, slots=True)
class JWTConfig:
    secret: str | None = None  # HS256
    public_key: str | None = None  # PEM, for RS256 / ES256
    algorithms: tuple[str, ...] = ("HS256", "RS256", "ES256")
    issuer: str | None = None
    audience: str | None = None  # None: any audience
    leeway: float = 10.0
    max_lifetime: float = 86400.0
    models_claim: str = "models"
    tier_claim: str = "tier"
    admin_claim: str | None = None  # None: no token is admin
    tiers: Mapping[str, Limits] = field(default_factory=dict)
    default_tier: str | None = None


class JWTVerifier:
    def __init__(self, config: JWTConfig, clock: Callable[[], float] = time.time) -> None:
        if not config.secret and not config.public_key:
            raise ValueError("JWT needs a secret (HS256) or a public key (RS256/ES256).")
        self.config = config
        self._clock = clock
        self._algorithms = [
            a for a in config.algorithms
            if (a.startswith("HS") and config.secret) or (not a.startswith("HS") and config.public_key)
        ]  # fmt: skip

    def principal(self, token: str) -> Principal:
        import jwt as pyjwt  # PyJWT and cryptography (~10 MB): only where JWTs are configured

        cfg = self.config
        key = cfg.public_key if cfg.public_key else cfg.secret
        try:
            header = pyjwt.get_unverified_header(token)
            alg = header.get("alg")
            if alg not in self._algorithms:
                raise AuthenticationFailed("The token's algorithm is not accepted.")
            claims: dict[str, Any] = pyjwt.decode(
                token,
                key=cfg.secret if str(alg).startswith("HS") else key,  # type: ignore[arg-type]
                algorithms=[str(alg)],
                issuer=cfg.issuer,
                audience=cfg.audience,
                leeway=cfg.leeway,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": cfg.audience is not None,
                    # a short HMAC secret or a small RSA key: refused, not a stderr warning
                    "enforce_minimum_key_length": True,
                },
            )
        except pyjwt.ExpiredSignatureError:
            raise AuthenticationFailed("The token has expired.", code="token_expired") from None
        except pyjwt.ImmatureSignatureError:
            raise AuthenticationFailed(
                "The token is not valid yet.", code="invalid_token"
            ) from None
        except pyjwt.InvalidAudienceError:
            raise AuthenticationFailed(
                "The token's audience is wrong.", code="invalid_token"
            ) from None
        except pyjwt.InvalidIssuerError:
            raise AuthenticationFailed(
                "The token's issuer is wrong.", code="invalid_token"
            ) from None
        except pyjwt.PyJWTError:
            raise AuthenticationFailed("The token is not valid.", code="invalid_token") from None
        self._check_lifetime(claims)
        subject = claims.get("sub")
        # printable: no control, format (bidi override) or separator characters in the
        # principal that logs, usage and the audit trail show
        if (
            not isinstance(subject, str)
            or not subject
            or len(subject) > 256
            or not subject.isprintable()
        ):
            raise AuthenticationFailed("The token's subject is not valid.", code="invalid_token")
        models = claims.get(cfg.models_claim)
        allowed: frozenset[str] | None = None
        if isinstance(models, list):
            allowed = frozenset(str(m) for m in models)
        elif models is not None:
            raise AuthenticationFailed(
                "The token's models claim must be a list.", code="invalid_token"
            )
        tier = claims.get(cfg.tier_claim)
        if tier is None:
            tier = cfg.default_tier
        if tier is None and cfg.tiers:  # no tier must not mean no limits
            raise AuthenticationFailed("The token has no tier.", code="invalid_token")
        if tier is not None and str(tier) not in cfg.tiers:
            raise AuthenticationFailed("The token's tier is unknown.", code="invalid_token")
        limits = cfg.tiers[str(tier)] if tier is not None else Limits()
        admin = cfg.admin_claim is not None and claims.get(cfg.admin_claim) is True
        return Principal(
            f"jwt:{subject}",
            role="admin" if admin else "inference",
            models=allowed,
            limits=limits,
            tier=str(tier) if tier is not None else None,
        )

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        """A token may not be valid for longer than ``max_lifetime`` (from ``iat`` when it
        has one, and from now)."""
        cfg = self.config
        exp = float(claims["exp"])  # PyJWT checked it is a number
        iat = claims.get("iat")
        issued = float(iat) if isinstance(iat, int | float) else None
        if exp - self._clock() > cfg.max_lifetime + cfg.leeway or (
            issued is not None and exp - issued > cfg.max_lifetime + cfg.leeway
        ):
            raise AuthenticationFailed(
                "The token is valid for too long; ask for a shorter-lived token.",
                code="invalid_token",
            )
