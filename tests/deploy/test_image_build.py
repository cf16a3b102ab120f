"""The slim image, built from deploy/Containerfile and started: the openai SDK through it.

``make image-test`` (and ``make test``) prepare what this needs and name it in the
environment: ``QG_TEST_IMAGE_ROOTFS``, a Debian root file system tarball made by debootstrap
(the base image, passed as ``BASE_IMAGE``), and ``QG_TEST_IMAGE_WHEELS``, the slim and build
locks' wheels downloaded by the host's pip. The build runs with no network at all (a new
network namespace), so every package comes from those wheels and is checked against the
locks' hashes. The built image's own entry point then runs under ``buildah run`` (chroot
isolation, host network), with the data directory a volume owned by the image's user, in
front of a fake upstream on 127.0.0.1; the SDK's answers must carry a nonce that only the
fake upstream, reached through the containerised gateway, can echo back.

Without those variables the test is skipped, except under CI, where that is a failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from support.buildah import Buildah, contained_process, contained_processes, missing
from support.faulty_upstream import FaultyUpstream
from support.server import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/qwen-gateway:slim-test"
BASE = "localhost/qwen-gateway-base:test"
DATA = "/var/lib/qwen-gateway"
UID = 10001


def _inputs() -> tuple[Path, Path]:
    rootfs = os.environ.get("QG_TEST_IMAGE_ROOTFS", "")
    wheels = os.environ.get("QG_TEST_IMAGE_WHEELS", "")
    why = missing()
    if why is None and not (rootfs and wheels):
        why = "QG_TEST_IMAGE_ROOTFS and QG_TEST_IMAGE_WHEELS are not set (`make image-test`)"
    if why is None and not (Path(rootfs).is_file() and Path(wheels).is_dir()):
        why = f"{rootfs} or {wheels} does not exist (`make image-test` makes them)"
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return Path(rootfs), Path(wheels)


@pytest.fixture
def buildah(tmp_path: Path) -> Iterator[Buildah]:
    """A private image store for this test, removed afterwards (vfs copies every layer)."""
    store = tmp_path / "containers"
    yield Buildah(store)
    shutil.rmtree(store, ignore_errors=True)


def _import_base(buildah: Buildah, rootfs: Path) -> None:
    container = buildah("from", "scratch").strip()
    buildah("add", container, str(rootfs), "/")  # a local tarball is unpacked at /
    buildah("commit", "--rm", container, BASE)


@contextmanager
def _started(argv: list[str], port: int, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` and wait until the gateway it starts answers /ready on ``port``."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the container exited early:\n{log_path.read_text()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the container was not ready in time:\n{log_path.read_text()}")
            time.sleep(0.2)  # polling for readiness, not synchronising test steps
        yield process
    finally:
        if process.poll() is None:  # a failed test: nothing may outlive it
            for pid, _ in contained_processes(process.pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.kill()
            process.wait()


def test_the_slim_image_builds_offline_starts_and_serves_the_openai_sdk(
    tmp_path: Path, buildah: Buildah
) -> None:
    rootfs, wheels = _inputs()
    _import_base(buildah, rootfs)
    revision = "test-" + secrets.token_hex(4)
    buildah.build_offline(
        ROOT,
        tmp_path / "build.log",
        "--format", "docker",  # OCI image configs have no HEALTHCHECK
        "-f", str(ROOT / "deploy" / "Containerfile"), "-t", IMAGE,
        "--build-arg", f"BASE_IMAGE={BASE}",
        "--build-arg", "PIP_NO_INDEX=1", "--build-arg", "PIP_FIND_LINKS=/wheels",
        "--volume", f"{wheels}:/wheels:ro",
        "--build-arg", f"REVISION={revision}",
    )  # fmt: skip

    # what the Containerfile promised is in the built image's configuration
    config = buildah.inspect(IMAGE)["Docker"]["config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.revision"] == revision
    assert labels["org.opencontainers.image.base.name"] == BASE
    assert config["User"] == f"{UID}:{UID}"
    assert DATA in config["Volumes"]
    entry = [*config["Entrypoint"], *config["Cmd"]]
    assert entry == ["qwen-gateway", "serve"]
    health = config["Healthcheck"]["Test"]
    assert health == ["CMD", "qwen-gateway", "healthcheck"], health

    # the image's own checks ran in the build: hashes, pip check, no torch, the SBOM
    log = (tmp_path / "build.log").read_text()
    assert "Looking in links: /wheels" in log and "No broken requirements found" in log

    container = buildah("from", IMAGE).strip()
    inside = buildah.run_command(container, ["python3", "-c", _PROBE])
    facts = subprocess.run(inside, capture_output=True, text=True, timeout=120, check=True)
    assert facts.stdout.split() == [str(UID), "False", "True"], facts.stdout

    # start it: its entry point, its ENV, a volume for the data directory, a fake upstream
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, UID, UID)
    port = free_port()
    nonce = "nonce-" + secrets.token_hex(8)
    started = time.time()
    with FaultyUpstream().running() as upstream:
        options = (
            "--volume", f"{data}:{DATA}",
            "--env", "QWEN_GATEWAY_SERVER__HOST=127.0.0.1",  # the host network: loopback only
            "--env", f"QWEN_GATEWAY_SERVER__PORT={port}",
            "--env", "MODEL_NAME=echo",  # the fake upstream echoes the last user message
            "--env", "MAX_CONTEXT_LENGTH=4096",
            "--env", f"QWEN_GATEWAY_MODEL__UPSTREAM__BASE_URL={upstream.base_url}",
        )  # fmt: skip
        argv = buildah.run_command(container, entry, options)
        with _started(argv, port, tmp_path / "container.log") as process:
            # the first admin key, written by the image's user into the volume
            key_file = data / "admin-key"
            assert key_file.stat().st_uid == UID
            key = key_file.read_text().strip()
            with OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key) as client:
                assert [m.id for m in client.models.list()] == ["echo"]
                answer = client.chat.completions.create(
                    model="echo", messages=[{"role": "user", "content": nonce}]
                )
                assert (answer.choices[0].message.content or "").strip() == nonce
                with client.chat.completions.create(
                    model="echo", messages=[{"role": "user", "content": nonce + " streamed"}],
                    stream=True,
                ) as stream:  # fmt: skip
                    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                assert text.strip() == nonce + " streamed"
            assert upstream.attempts["echo"] == 2  # both answers came from the upstream
            # the image's HEALTHCHECK command, run inside a second container of the image
            # with the settings moved as for the gateway (it reads them as serve does)
            checker = buildah("from", IMAGE).strip()
            check = subprocess.run(
                buildah.run_command(checker, health[1:], options), capture_output=True,
                timeout=120, check=False,
            )  # fmt: skip
            assert check.returncode == 0, check.stderr
            # SIGTERM to the gateway, as a runtime stops a container: it drains and exits 0,
            # and buildah run passes that on
            os.kill(contained_process(process.pid, "qwen-gateway"), signal.SIGTERM)
            assert process.wait(timeout=60) == 0, (tmp_path / "container.log").read_text()

    # read-only root friendly: the gateway wrote nothing into the image's file system (only
    # the /run directory itself changes: buildah run makes and removes its own mount points
    # there; a file the gateway left in /run would still be listed)
    rootfs = Path(buildah("mount", container).strip())
    try:
        written = sorted(
            str(path.relative_to(rootfs))
            for path in rootfs.rglob("*")
            if path.lstat().st_mtime >= started and path != rootfs / "run"
        )
    finally:
        buildah("umount", container)
    assert written == [], written


# run inside the image: its user, whether torch is importable, whether the SBOM is there
_PROBE = (
    "import importlib.util, os; "
    "print(os.getuid(), importlib.util.find_spec('torch') is not None, "
    "os.path.isfile('/opt/qwen-gateway/sbom.cdx.json'))"
)
