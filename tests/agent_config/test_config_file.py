"""The agent's TOML config, environment overrides and flags: what loads, and the one-line
error (key and file or variable named) for every way it can be wrong."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from node_agent.config import (
    DURATION_KEYS,
    OPTIONAL_TEXT_KEYS,
    TOP_LEVEL_KEYS,
    AgentConfig,
    ConfigError,
    InstanceConfig,
    load_config,
    parse_instance_spec,
)

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
server = "agft.example.com:50051"
node_id = "gpu-node-7"
window_s = 2.0
max_lease_s = 30

[[instances]]
name = "vllm-0"
metrics_url = "http://127.0.0.1:8001/metrics"
gpu_indices = [0, 1]
model_name = "meta-llama/Llama-3.1-8B-Instruct"

[[instances]]
name = "sglang-0"
metrics_url = "https://127.0.0.1:30000/metrics"
gpu_indices = [2]
engine = "sglang"
match_labels = { model_name = "qwen" }
"""


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(
    path: Path | None,
    env: dict[str, str] | None = None,
    server: str | None = None,
    node_id: str | None = None,
) -> AgentConfig:
    return load_config(path, environ=env or {}, server=server, node_id=node_id)


def error_of(path: Path | None, env: dict[str, str] | None = None, **kw: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=env or {}, **kw)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message, "an error is one line"
    return message


# ---- what loads ---------------------------------------------------------------------------


def test_a_good_file_loads_every_field(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD))
    assert config.server == "agft.example.com:50051"
    assert config.node_id == "gpu-node-7"
    assert config.window_s == 2.0 and isinstance(config.max_lease_s, float)
    assert config.max_lease_s == 30.0
    assert config.scrape_timeout_s == AgentConfig().scrape_timeout_s  # default kept
    assert config.instances == (
        InstanceConfig(
            name="vllm-0",
            metrics_url="http://127.0.0.1:8001/metrics",
            gpu_indices=(0, 1),
            engine="vllm",
            model_name="meta-llama/Llama-3.1-8B-Instruct",
        ),
        InstanceConfig(
            name="sglang-0",
            metrics_url="https://127.0.0.1:30000/metrics",
            gpu_indices=(2,),
            engine="sglang",
            match_labels=(("model_name", "qwen"),),
        ),
    )
    assert config.token is None and config.token_file is None


def test_every_agent_config_field_is_a_file_key_except_instances_and_token() -> None:
    fields = {f.name for f in dataclasses.fields(AgentConfig)}
    assert set(TOP_LEVEL_KEYS) == fields - {"instances", "token"}


def test_the_shipped_example_loads_and_names_every_key() -> None:
    example = ROOT / "deploy" / "agent.example.toml"
    config = load(example)
    assert config.instances, "the example configures at least one instance"
    text = example.read_text()
    for key in (*TOP_LEVEL_KEYS, "match_labels", "engine", "model_name"):
        assert key in text, f"deploy/agent.example.toml does not mention {key}"


def test_instance_flags_add_to_the_file(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, GOOD),
        environ={},
        instance_specs=["name=extra,url=http://10.0.0.1:9000/metrics,gpus=3+4,model=m"],
    )
    assert [i.name for i in config.instances] == ["vllm-0", "sglang-0", "extra"]
    assert config.instances[-1].gpu_indices == (3, 4)
    assert config.instances[-1].model_name == "m"


def test_no_file_at_all_gives_the_defaults() -> None:
    config = load(None)
    assert config.server == "127.0.0.1:50051" and config.instances == ()


# ---- precedence: file < environment < flags -----------------------------------------------


def test_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    env = {
        "AGFT_AGENT_SERVER": "env.example.com:443",
        "AGFT_AGENT_NODE_ID": "from-env",
        "AGFT_AGENT_WINDOW_S": "0.5",
        "AGFT_AGENT_TLS_CA_FILE": "/etc/agft/ca.pem",
    }
    config = load(path, env)
    assert (config.server, config.node_id, config.window_s) == (
        "env.example.com:443",
        "from-env",
        0.5,
    )
    assert config.tls_ca_file == "/etc/agft/ca.pem"
    config = load(path, env, server="flag.example.com:1", node_id=None)
    assert config.server == "flag.example.com:1"  # the flag wins
    assert config.node_id == "from-env"  # a flag not given leaves the variable's value


@pytest.mark.parametrize("key", DURATION_KEYS)
def test_every_duration_has_a_typed_variable(key: str) -> None:
    # Each duration alone, at a value the cross-checks accept.
    value = {"lease_check_s": "0.25", "min_window_s": "0.5", "backoff_initial_s": "0.25"}.get(
        key, "5"
    )
    config = load(None, {f"AGFT_AGENT_{key.upper()}": value})
    assert getattr(config, key) == float(value)


@pytest.mark.parametrize("key", OPTIONAL_TEXT_KEYS)
def test_every_file_setting_has_a_variable(key: str) -> None:
    env = {f"AGFT_AGENT_{key.upper()}": "/x"}
    if key in ("tls_cert_file", "tls_key_file"):
        env = {"AGFT_AGENT_TLS_CERT_FILE": "/x", "AGFT_AGENT_TLS_KEY_FILE": "/x"}
    assert getattr(load(None, env), key) == "/x"


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD), {"AGFT_AGENT_NODE_ID": "", "AGFT_AGENT_WINDOW_S": " "})
    assert config.node_id == "gpu-node-7" and config.window_s == 2.0


def test_the_token_comes_from_the_environment_only(tmp_path: Path) -> None:
    config = load(None, {"AGFT_AGENT_TOKEN": "  s3cret\n"})
    assert config.token == "s3cret"
    assert "s3cret" not in repr(config), "the token never shows in a repr"
    message = error_of(write(tmp_path, 'token = "s3cret"\n'))
    assert message.startswith(f"{tmp_path / 'agent.toml'}: token: ")
    assert "token_file" in message and "AGFT_AGENT_TOKEN" in message
    assert "s3cret" not in message, "the error never repeats the secret"


def test_token_and_token_file_together_are_refused() -> None:
    message = error_of(None, {"AGFT_AGENT_TOKEN": "t", "AGFT_AGENT_TOKEN_FILE": "/etc/agft/token"})
    assert "AGFT_AGENT_TOKEN" in message and "AGFT_AGENT_TOKEN_FILE" in message


def test_a_systemd_credential_is_the_token_file_when_none_is_set(tmp_path: Path) -> None:
    (tmp_path / "agft-token").write_text("t")
    config = load(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert config.token_file == str(tmp_path / "agft-token")
    # An explicit token file or token wins over the credential.
    explicit = load(None, {"CREDENTIALS_DIRECTORY": str(tmp_path), "AGFT_AGENT_TOKEN_FILE": "/t"})
    assert explicit.token_file == "/t"
    inline = load(None, {"CREDENTIALS_DIRECTORY": str(tmp_path), "AGFT_AGENT_TOKEN": "t"})
    assert inline.token_file is None and inline.token == "t"


# ---- errors: the file itself ------------------------------------------------------------------


def test_a_json_file_says_the_format_is_toml_now(tmp_path: Path) -> None:
    path = write(tmp_path, '{"server": "x:1"}', name="agent.json")
    message = error_of(path)
    assert message.startswith(f"{path}: ") and "TOML" in message and "JSON" in message


def test_json_content_in_a_toml_file_gets_the_same_hint(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, '{"server": "x:1"}'))
    assert "not valid TOML" in message and "JSON" in message


def test_bad_toml_names_the_file_and_line(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, 'server = "a:1"\nwindow_s = = 2\n'))
    assert message.startswith(f"{tmp_path / 'agent.toml'}: not valid TOML: ")
    assert "line 2" in message


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    message = error_of(tmp_path / "nope.toml")
    assert (
        message
        == f"{tmp_path / 'nope.toml'}: cannot read the config file: No such file or directory"
    )


# ---- errors: keys, types, values ------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        # unknown keys, with a hint
        ("windw_s = 1.0", "windw_s: unknown key (did you mean window_s?)"),
        (
            '[[instances]]\nname = "a"\nurl = "http://h/metrics"\ngpu_indices = [0]',
            "instances[0].url: unknown key (did you mean metrics_url?)",
        ),
        # wrong types
        ('window_s = "fast"', 'window_s: expected a number of seconds, got "fast"'),
        ("window_s = true", "window_s: expected a number of seconds, got true"),
        ("server = 50051", "server: expected a string, got 50051"),
        (
            'instances = "vllm-0"',
            'instances: expected an array of tables ([[instances]]), got "vllm-0"',
        ),
        (
            '[[instances]]\nname = "a"\nmetrics_url = "http://h/m"\ngpu_indices = "0,1"',
            'instances[0].gpu_indices: expected a list of integers, got "0,1"',
        ),
        (
            '[[instances]]\nname = "a"\nmetrics_url = "http://h/m"\ngpu_indices = [0, true]',
            "instances[0].gpu_indices: expected a list of integers, got [0, true]",
        ),
        (
            '[[instances]]\nname = 7\nmetrics_url = "http://h/m"\ngpu_indices = [0]',
            "instances[0].name: expected a string, got 7",
        ),
        (
            '[[instances]]\nname = "a"\nmetrics_url = "http://h/m"\ngpu_indices = [0]\n'
            "match_labels = { model_name = 3 }",
            "instances[0].match_labels.model_name: expected a string, got 3",
        ),
        (
            '[[instances]]\nname = "a"\nmetrics_url = "http://h/m"\ngpu_indices = [0]\n'
            'match_labels = "model_name=x"',
            'instances[0].match_labels: expected a table of label = "value", got "model_name=x"',
        ),
        # missing required keys
        (
            '[[instances]]\nname = "a"\ngpu_indices = [0]',
            "instances[0].metrics_url: missing (an instance needs name, metrics_url, gpu_indices)",
        ),
        # bad values
        ("window_s = 0", "window_s: must be a positive number of seconds, got 0"),
        ("max_lease_s = -5", "max_lease_s: must be a positive number of seconds, got -5"),
        (
            "scrape_timeout_s = inf",
            "scrape_timeout_s: must be a positive number of seconds, got inf",
        ),
        ('node_id = ""', "node_id: must not be empty"),
        (
            'server = "agft.example.com"',
            'server: expected host:port (e.g. agft.example.com:50051), got "agft.example.com"',
        ),
        ('server = "h:99999"', "server: expected host:port"),
        (
            '[[instances]]\nname = "a"\nmetrics_url = "127.0.0.1:8001/metrics"\ngpu_indices = [0]',
            "instances[0].metrics_url: expected an http:// or https:// URL with a host, "
            'got "127.0.0.1:8001/metrics"',
        ),
        (
            '[[instances]]\nname = "a"\nmetrics_url = "ftp://h/metrics"\ngpu_indices = [0]',
            "instances[0].metrics_url: expected an http:// or https:// URL",
        ),
        (
            '[[instances]]\nname = "a"\nmetrics_url = "http://h/m"\ngpu_indices = []',
            "instances[0].gpu_indices: is empty; an instance runs on at least one GPU",
        ),
        (
            '[[instances]]\nname = "a"\nmetrics_url = "http://h/m"\ngpu_indices = [-1]',
            "instances[0].gpu_indices: GPU indices are 0 or more, got -1",
        ),
        (
            '[[instances]]\nname = "a"\nmetrics_url = "http://h/m"\ngpu_indices = [1, 1]',
            "instances[0].gpu_indices: lists a GPU twice: [1, 1]",
        ),
        (
            '[[instances]]\nname = "a"\nmetrics_url = "http://h/m"\ngpu_indices = [0]\n'
            'engine = "tgi"',
            'instances[0].engine: unknown engine "tgi"; known: vllm, sglang',
        ),
        # ranges between keys
        ("min_window_s = 5\nmax_window_s = 2", "min_window_s: 5 s is above max_window_s (2 s)"),
        ("backoff_initial_s = 60", "backoff_initial_s: 60 s is above backoff_max_s (30 s)"),
        ("window_s = 120", "window_s: 120 s is outside [min_window_s, max_window_s] = [0.1, 60] s"),
        ("lease_check_s = 90", "lease_check_s: 90 s must be below max_lease_s (60 s)"),
        ('tls_cert_file = "/c.pem"', "tls_cert_file: tls_cert_file and tls_key_file go together"),
        # two instances
        (
            '[[instances]]\nname = "a"\nmetrics_url = "http://h/m"\ngpu_indices = [0]\n'
            '[[instances]]\nname = "a"\nmetrics_url = "http://h/n"\ngpu_indices = [1]',
            'instances[1].name: "a" is already the name of ',
        ),
        (
            '[[instances]]\nname = "a"\nmetrics_url = "http://h/m"\ngpu_indices = [0, 1]\n'
            '[[instances]]\nname = "b"\nmetrics_url = "http://h/n"\ngpu_indices = [1]',
            'instances[1].gpu_indices: GPU 1 already belongs to "a"',
        ),
    ],
)
def test_each_error_names_the_file_and_the_key(tmp_path: Path, toml: str, expected: str) -> None:
    path = write(tmp_path, toml + "\n")
    message = error_of(path)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message


def test_the_cli_prints_the_error_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agft_cli.main import main

    path = write(
        tmp_path, '[[instances]]\nname = "a"\nmetrics_url = "http://h/m"\ngpu_indices = "0,1"\n'
    )
    assert main(["agent", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f'agft agent: {path}: instances[0].gpu_indices: expected a list of integers, got "0,1"\n'
    )


# ---- errors: environment and flags ------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"AGFT_AGENT_WINDOW_S": "fast"},
            'AGFT_AGENT_WINDOW_S: expected a number of seconds, got "fast"',
        ),
        (
            {"AGFT_AGENT_MAX_LEASE_S": "-1"},
            "AGFT_AGENT_MAX_LEASE_S: must be a positive number of seconds",
        ),
        ({"AGFT_AGENT_SERVER": "no-port"}, "AGFT_AGENT_SERVER: expected host:port"),
        (
            {"AGFT_AGENT_WINDOWS_S": "1"},
            "AGFT_AGENT_WINDOWS_S: not a setting of the agent (did you mean AGFT_AGENT_WINDOW_S?)",
        ),
        (
            {"AGFT_AGENT_INSTANCES": "x"},
            "AGFT_AGENT_INSTANCES: instances come from the config file or --instance",
        ),
        (
            {"AGFT_AGENT_MIN_WINDOW_S": "90"},
            "AGFT_AGENT_MIN_WINDOW_S: 90 s is above max_window_s (60 s)",
        ),
    ],
)
def test_each_environment_error_names_the_variable(env: dict[str, str], expected: str) -> None:
    message = error_of(None, env)
    assert message.startswith(expected), message


def test_a_range_error_says_where_the_other_value_came_from(tmp_path: Path) -> None:
    # min in the file, max from the environment: the line names the file's key.
    path = write(tmp_path, "min_window_s = 5\n")
    message = error_of(path, {"AGFT_AGENT_MAX_WINDOW_S": "2"})
    assert message.startswith(f"{path}: min_window_s: 5 s is above max_window_s (2 s)")


def test_a_server_flag_error_names_the_flag() -> None:
    assert error_of(None, server="nope").startswith("--server: expected host:port")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("name=a,url=http://h/m", "missing gpus="),
        ("name=a,url=http://h/m,gpus=0,1", "'1' is not key=value"),
        ("name=a,url=http://h/m,gpus=0;1", "gpus= takes GPU indices joined by '+'"),
        ("name=a,url=http://h/m,gpus=0,gpu=1", "unknown key 'gpu'"),
        ("name=a,url=localhost:8001,gpus=0", "metrics_url: expected an http:// or https:// URL"),
        ("name=a,url=http://h/m,gpus=0,engine=tgi", 'engine: unknown engine "tgi"'),
    ],
)
def test_instance_spec_errors_name_the_spec(spec: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_instance_spec(spec)
    assert str(info.value).startswith(f"--instance {spec!r}: ")
    assert expected in str(info.value)


def test_a_flag_instance_may_not_reuse_a_file_instance_gpu(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            write(tmp_path, GOOD), environ={}, instance_specs=["name=x,url=http://h/m,gpus=2"]
        )
    assert 'GPU 2 already belongs to "sglang-0"' in str(info.value)
