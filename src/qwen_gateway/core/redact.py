"""Keeping credentials out of what is shown or logged: URLs' userinfo and secret-looking names."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode

MASK = "****"

# scheme://userinfo@ : the userinfo part of any URL in a text
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#@]*@")
#: A setting, flag, header or parameter whose name says its value is a secret.
SECRET_NAME = re.compile(
    r"(?i)(pass(word|wd|phrase)?(?![a-z])|secret|token(?![a-z])|api[-_]?key|(^|[-_])key$|"
    r"credential|authorization|private|cookie|signature)"
)


def looks_secret(name: str) -> bool:
    return SECRET_NAME.search(name) is not None


def strip_userinfo(text: str) -> str:
    """``text`` with the userinfo (``user:password@``) of every URL in it removed."""
    return _USERINFO.sub(r"\1", text)


def mask_url(url: str) -> str:
    """The URL with its password (or a user-only token) and secret-looking query values masked;
    the user name, host and path stay, so the operator can tell which URL it is."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, tail = _split_authority(rest)
    creds, at, host = authority.rpartition("@")
    if at:
        user, colon, _ = creds.partition(":")
        authority = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    path, question, query = tail.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        pairs = parse_qsl(query, keep_blank_values=True)
        masked = [(k, MASK if looks_secret(k) else v) for k, v in pairs]
        path = f"{path}?{urlencode(masked, safe='*')}{hash_}{fragment}"
    return f"{scheme}{sep}{authority}{path}"


def _split_authority(rest: str) -> tuple[str, str]:
    """(authority, what follows it) of a URL without its scheme."""
    end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
    return rest[:end], rest[end:]
