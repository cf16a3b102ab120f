"""Settings precedence: CLI > environment > YAML > defaults, with errors naming the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def test_container_variables_serve_model_name_through_an_upstream() -> None:
    """The slim image's environment: MODEL_NAME is the name clients use and the name asked
    of the upstream; nothing local is built; QWEN_GATEWAY_* still wins where it is explicit."""
    env = {
        "MODEL_NAME": "Qwen/Qwen2.5-7B-Instruct",
        "MAX_CONTEXT_LENGTH": "32768",
        "QWEN_GATEWAY_MODEL__ENGINE": "openai",
        "QWEN_GATEWAY_MODEL__UPSTREAM__BASE_URL": "http://vllm:8000/v1",
    }
    s = load_settings(env=env)
    assert s.served_model_name == "Qwen/Qwen2.5-7B-Instruct"
    assert s.model.context_window == 32768
    assert s.model.upstream.model is None  # the upstream is asked for the served name
    assert not s.needs_tiny_model and not s.needs_tiny_embedding_model
    s = load_settings(
        env={
            **env,
            "QWEN_GATEWAY_MODEL__SERVED_NAME": "qwen",
            "QWEN_GATEWAY_MODEL__CONTEXT_WINDOW": "8192",
        }
    )
    assert s.served_model_name == "qwen"
    assert s.model.context_window == 8192


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"QWEN_GATEWAY_SERVER__PORT": "eighty"}, "server.port"),
        ({"MAX_CONTEXT_LENGTH": "-5"}, "model.context_window"),
        ({"QWEN_GATEWAY_MODEL__DTYPE": "int3"}, "model.dtype"),
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


def test_the_clients_key_variable_is_not_a_setting() -> None:
    s = load_settings(env={"QWEN_GATEWAY_KEY": "sk-qg-EXAMPLEADMINKEY"})
    assert "sk-qg-EXAMPLEADMINKEY" not in repr(s.model_dump())


PLANTED = [f"planted-secret-{i:02d}" for i in range(16)]


def test_config_show_masks_every_secret_in_model_and_deployments(tmp_path: Path) -> None:
    p = PLANTED

    def model(first: int) -> dict[str, Any]:
        return {
            "upstream": {"api_key": p[first], "base_url": f"http://svc:{p[first + 1]}@up:1/v1"},
            "vllm": {
                "remote_url": f"http://{p[first + 2]}@vllm:8000/v1",
                "env": {"HF_TOKEN": p[first + 3], "HUGGING_FACE_HUB_TOKEN": p[first + 3]},
                "extra_args": ["--api-key", p[first + 4], f"--hf-token={p[first + 4]}", "--x"],
            },
            "options": {"api_key": p[first + 5], "nested": {"password": p[first + 5]}},
        }

    tree = {
        "server": {"api_key": p[12], "metrics_token": p[13]},
        "database": {"url": f"postgresql://gw@db/gateway?password={p[14]}&sslmode=require"},
        "redis": {"url": f"redis://:{p[15]}@redis:6379/0"},
        "auth": {"jwt": {"secret": p[0] * 2, "audience": "qwen"}},
        "model": model(0),
        "deployments": [
            {"name": "up", "engine": "openai", **model(6),
             "replicas": [f"http://svc:{p[11]}@10.0.0.1:8001/v1", "http://10.0.0.2:8001/v1"]},
        ],
    }  # fmt: skip
    shown = json.dumps(redacted(load_settings(tree, env={})))
    assert not [secret for secret in PLANTED if secret in shown]
    # what is not secret stays, so the operator can still tell the URLs apart
    for visible in ("http://svc:****@up:1/v1", "sslmode=require", "10.0.0.2:8001", "--x"):
        assert visible in shown


@pytest.mark.parametrize(
    ("tree", "env", "key"),
    [
        ({}, {"QWEN_GATEWAY_REDIS__URLL": "redis://:hunter2@h/0"}, "redis.urll"),
        ({"server": {"api_key": ["hunter2"]}}, {}, "server.api_key"),
        ({"deployments": [{"upstream": {"api_key": "hunter2"}}]}, {}, "deployments.0.name"),
        ({"auth": {"jwt": {"secret": {"v": "hunter2"}}}}, {}, "auth.jwt.secret"),
        ({"database": {"url": ["postgresql://u:hunter2@h/db"]}}, {}, "database.url"),
        ({"model": {"vllm": {"env": {"HF_TOKEN": ["hunter2"]}}}}, {}, "model.vllm.env"),
        ({"model": {"upstream": {"base_url": ["http://u:hunter2@h"]}}}, {}, "model.upstream"),
        ({"deployments": [{"name": "d", "engine": "openai",
                           "replicas": ["ftp://u:hunter2@h/"]}]}, {}, "deployments.0.replicas.0"),
        ({"deployments": [{"name": "d", "engine": "openai", "replicas":
                           ["http://u:hunter2@h/", "http://u:hunter2@h/"]}]}, {}, "replicas.1"),
    ],
)  # fmt: skip
def test_config_errors_never_show_secret_or_unknown_values(
    tree: dict[str, Any], env: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tree, env=env)
    assert key in str(info.value)
    assert "hunter2" not in str(info.value)


def _jwt(**jwt: Any) -> dict[str, Any]:
    return {"auth": {"jwt": {"secret": "s" * 32, "audience": "qwen", **jwt}}}


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (_jwt(audience=None), "auth.jwt.audience"),
        ({"auth": {"jwt": {"public_key": "/k.pem"}}}, "auth.jwt.audience"),
        (_jwt(secret="short-secret-23-bytes!!"), "HS256 needs a secret of at least 32 bytes"),
        (_jwt(algorithms=["HS512"]), "HS512 needs a secret of at least 64 bytes"),
        (_jwt(default_tier="gold"), "auth.jwt.default_tier"),
    ],
)
def test_jwt_settings_that_accept_too_much_are_refused(tree: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(tree, env={})
    assert "short-secret" not in str(info.value) and "s" * 32 not in str(info.value)


def test_jwt_audience_none_accepts_any_audience_and_admin_is_off_by_default() -> None:
    s = load_settings(_jwt(audience="none"), env={})
    assert s.auth.jwt.audience == "none"
    assert s.auth.jwt.admin_claim is None
    assert s.auth.jwt.max_lifetime_seconds == 86400


def test_replica_labels_are_one_per_replica() -> None:
    d = {"name": "d", "engine": "openai", "replicas": ["http://a/v1", "http://b/v1"]}
    with pytest.raises(ConfigError, match="one label per replica"):
        load_settings({"deployments": [{**d, "replica_labels": ["a"]}]}, env={})
    s = load_settings({"deployments": [{**d, "replica_labels": ["east", "west"]}]}, env={})
    assert s.deployments[0].replica_labels == ["east", "west"]


# ---- limits and other config mistakes: ConfigError naming the setting -----------------------


def test_tier_and_model_limits_are_the_one_limits_type() -> None:
    from qwen_gateway.core.limits import Limits

    s = load_settings(
        {"auth": {"tiers": {"gold": {"rpm": 5}}}, "limits": {"models": {"m": {"tpm": 100}}}},
        env={},
    )
    assert s.auth.tiers["gold"] == Limits(rpm=5)
    assert s.limits.models["m"] == Limits(tpm=100)
    assert s.limits.models["m"].counts_tokens


@pytest.mark.parametrize(
    ("cli", "key", "why"),
    [
        ({"limits": {"backend": "redis"}}, "limits.backend", "redis.url is not set"),
        ({"auth": {"tiers": {"gold": {"rpm": 0}}}}, "auth.tiers.gold.rpm", "greater than"),
        ({"limits": {"models": {"m": {"rpn": 5}}}}, "limits.models.m.rpn", "not permitted"),
        ({"deployments": [{"name": "d", "replicas": 0}]}, "deployments.0.replicas", "replica"),
    ],
)
def test_config_mistakes_are_config_errors_naming_the_setting(
    cli: dict[str, Any], key: str, why: str
) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'") as info:
        load_settings(cli, env={})
    assert why in str(info.value)


def test_a_broken_intent_model_file_is_a_config_error(tmp_path: Path) -> None:
    from qwen_gateway.container import intent_classifier

    model = tmp_path / "intent.json"
    model.write_text('{"format": "something else"}')
    settings = load_settings(
        {"routing": {"intent": {"model_file": str(model)}}, "data_dir": str(tmp_path)}, env={}
    )
    with pytest.raises(ConfigError, match=r"routing\.intent\.classifier") as info:
        intent_classifier(settings)
    assert str(model) in str(info.value)
