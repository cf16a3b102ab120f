"""Settings precedence: CLI > environment > YAML > defaults, with errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_gateway.config import ConfigError, load_settings, redacted


def test_defaults_are_the_embedded_single_machine_setup() -> None:
    s = load_settings(env={})
    assert s.embedded_model
    assert s.served_model_name == "qwen2.5-tiny"
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8000)
    assert s.server.api_key is None
    assert s.model.max_output_tokens == 8192
    assert s.server.max_body_bytes == 8 * 1024 * 1024


def test_cli_beats_env_beats_yaml_beats_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("server:\n  port: 9001\n  host: 0.0.0.0\nmodel:\n  max_batch_size: 4\n")
    s = load_settings(config_file=cfg, env={})
    assert (s.server.port, s.server.host, s.model.max_batch_size) == (9001, "0.0.0.0", 4)
    env = {"QWEN_GATEWAY_SERVER__PORT": "9002", "QWEN_GATEWAY_MODEL__MAX_BATCH_SIZE": "8"}
    s = load_settings(config_file=cfg, env=env)
    assert (s.server.port, s.server.host, s.model.max_batch_size) == (9002, "0.0.0.0", 8)
    s = load_settings({"server": {"port": 9003, "host": None}}, config_file=cfg, env=env)
    assert (s.server.port, s.server.host) == (9003, "0.0.0.0")


def test_config_file_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  served_name: my-qwen\n")
    assert load_settings(env={"QWEN_GATEWAY_CONFIG": str(cfg)}).served_model_name == "my-qwen"


def test_deployment_variables_model_name_and_max_context_length() -> None:
    s = load_settings(env={"MODEL_NAME": "Qwen/Qwen2.5-7B-Instruct", "MAX_CONTEXT_LENGTH": "65536"})
    assert s.model_path == "Qwen/Qwen2.5-7B-Instruct"
    assert s.served_model_name == "Qwen/Qwen2.5-7B-Instruct"
    assert s.model.context_window == 65536
    assert not s.embedded_model


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"QWEN_GATEWAY_SERVER__PORT": "eighty"}, "server.port"),
        ({"MAX_CONTEXT_LENGTH": "-5"}, "model.context_window"),
        ({"QWEN_GATEWAY_MODEL__DTYPE": "int3"}, "model.dtype"),
        ({"QWEN_GATEWAY_SERVER__NO_SUCH_THING": "1"}, "server.no_such_thing"),
    ],
)
def test_bad_values_name_the_key_and_value(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert key in str(info.value)
    assert next(iter(env.values())) in str(info.value)


def test_bad_yaml_is_reported(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(config_file=cfg, env={})


def test_redacted_hides_the_api_key() -> None:
    s = load_settings(env={"QWEN_GATEWAY_API_KEY": "sk-secret"})
    assert s.server.api_key is not None
    assert s.server.api_key.get_secret_value() == "sk-secret"
    shown = redacted(s)
    assert shown["server"]["api_key"] == "**********"
    assert "sk-secret" not in repr(shown)
