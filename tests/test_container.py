"""The composition root: ``build`` gives started services and closes them on exit; the first
start with authentication on creates an admin key through the admin service (audited)."""

from __future__ import annotations

import stat
from pathlib import Path

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container, build
from qwen_gateway.service.route import Route
from routing.helpers import scripted


async def test_build_starts_the_services_and_bootstraps_one_admin_key(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path)}, env={})
    async with build(settings, {"m": scripted("m")}) as services:
        await services.fleet.wait_loaded()
        assert await services.fleet.ready()
        key = services.bootstrap_key
        assert key is not None
        path = services.bootstrap_key_file
        assert path.read_text() == key + "\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        (event,) = await services.store.admin.audit(10, "key.create")
        assert (event["actor"], event["details"]["role"]) == ("bootstrap", "admin")
        assert isinstance(services.pipeline.generate, Route)  # no optional stage configured
    async with build(settings, {"m": scripted("m")}) as again:
        assert again.bootstrap_key is None  # a key exists: none is made
        assert await again.store.admin.count_keys() == 1


async def test_without_authentication_no_key_is_made(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path), "auth": {"enabled": False}}, env={})
    async with build(settings, {"m": scripted("m")}) as services:
        assert services.bootstrap_key is None
        assert await services.store.admin.count_keys() == 0


async def test_the_container_facade_starts_and_closes_once(
    tmp_path: Path,
) -> None:
    settings = load_settings({"data_dir": str(tmp_path), "auth": {"enabled": False}}, env={})
    container = Container(settings, {"m": scripted("m")})
    await container.start()
    await container.aclose()
    await container.aclose()  # twice: nothing left to close
    assert container.services.pipeline.account.in_flight == 0
