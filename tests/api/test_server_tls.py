"""TLS: ``serve --ssl-certfile/--ssl-keyfile`` answers the openai SDK over HTTPS, streamed and
not, with a certificate made here by a throwaway CA."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from support.certs import make_certificates
from support.server import free_port, running_command

pytestmark = pytest.mark.e2e


def test_the_sdk_talks_to_the_server_over_verified_tls(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    certs = make_certificates(tmp_path)
    port = free_port()
    args = ["--model", str(tiny_model_dir), "--served-name", "qwen2.5-tiny", "--port", str(port),
            "--ssl-certfile", str(certs.cert), "--ssl-keyfile", str(certs.key)]  # fmt: skip
    with running_command(args, port, tmp_path / "serve.log", tls_ca=certs.ca) as server:
        assert server.base_url.startswith("https://")
        ask = [{"role": "user", "content": "Hello"}]
        with (
            httpx.Client(verify=ssl.create_default_context(cafile=certs.ca)) as http,
            openai.OpenAI(
                base_url=server.base_url + "/v1", api_key="none", http_client=http, max_retries=0
            ) as client,
        ):
            reply = client.chat.completions.create(
                model="qwen2.5-tiny",
                messages=ask,
                max_tokens=5,  # type: ignore[arg-type]
            )
            assert reply.choices[0].finish_reason in ("stop", "length")
            assert reply.usage is not None and reply.usage.completion_tokens > 0
            with client.chat.completions.create(
                model="qwen2.5-tiny", messages=ask, max_tokens=5, stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True},
            ) as stream:  # fmt: skip
                chunks = list(stream)
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
            assert any(c.choices and c.choices[0].finish_reason for c in chunks)
        # a client that does not trust the test CA refuses the certificate
        with (
            httpx.Client() as untrusting,
            openai.OpenAI(
                base_url=server.base_url + "/v1", api_key="none", http_client=untrusting,
                max_retries=0,
            ) as client,
            pytest.raises(openai.APIConnectionError),
        ):  # fmt: skip
            client.models.list()
        # `qwen-gateway healthcheck` (the images' HEALTHCHECK) asks over TLS, from the settings
        env = {**os.environ, "QWEN_GATEWAY_SERVER__PORT": str(port)}
        probe = [sys.executable, "-m", "qwen_gateway.cli.main", "healthcheck"]
        plain = subprocess.run(probe, env=env, capture_output=True, timeout=60, check=False)
        assert plain.returncode == 1  # without the TLS settings: no answer over plain HTTP
        env["QWEN_GATEWAY_SERVER__SSL_CERTFILE"] = str(certs.cert)
        env["QWEN_GATEWAY_SERVER__SSL_KEYFILE"] = str(certs.key)
        done = subprocess.run(probe, env=env, capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        # plain HTTP on the TLS port gets no answer
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10)


def test_a_certificate_without_its_key_is_a_configuration_error(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "qwen_gateway.cli.main", "serve", "--no-auth",
         "--data-dir", str(tmp_path / "data"), "--ssl-certfile", str(certs.cert)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "ssl_certfile and server.ssl_keyfile go together" in done.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_missing_certificate_stops_the_server_with_exit_2(tmp_path: Path, workers: str) -> None:
    """Checked before any worker starts: not a worker failing (and restarted) forever."""
    certs = make_certificates(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "qwen_gateway.cli.main", "serve", "--no-auth",
         "--data-dir", str(tmp_path / "data"), "--workers", workers,
         "--ssl-certfile", str(tmp_path / "missing.pem"), "--ssl-keyfile", str(certs.key)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "Cannot load the TLS certificate" in " ".join(done.stderr.split())
    assert "Starting" not in done.stderr and "Loading" not in done.stderr
