"""Configuration: loading order, environment overrides, secrets, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from console.config import AppConfig, ConfigError, HAProxySwitch, load_config
from console.config_example import example_config

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ACGS_CONSOLE")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "console", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=full_env,
        timeout=60,
    )


@pytest.fixture
def example_file(tmp_path: Path) -> Path:
    path = tmp_path / "acgs-console.toml"
    path.write_text(example_config())
    return path


def test_example_is_valid_and_validate_exits_zero(example_file: Path) -> None:
    result = run_cli("config", "validate", str(example_file))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert "Traceback" not in result.stderr


def _field_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, info in model.model_fields.items():
        out.add(prefix + name)
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _field_paths(ann, prefix + name + ".")
    return out


def test_example_mentions_every_field() -> None:
    import inspect

    import console.config as config_module

    text = example_config()
    # Every model of the configuration, found rather than listed, so a new section or field
    # without its line in the example fails here.
    models = [
        obj
        for obj in vars(config_module).values()
        if inspect.isclass(obj)
        and issubclass(obj, BaseModel)
        and obj.__module__ == config_module.__name__
        and obj is not config_module.ConfigProblem
    ]
    assert AppConfig in models and HAProxySwitch in models and len(models) >= 15
    names: set[str] = set()
    for model in models:
        names |= {p.rsplit(".", 1)[-1] for p in _field_paths(model)}
    missing = sorted(
        n
        for n in names
        if f"{n} =" not in text
        and f"[{n}" not in text
        and f".{n}]" not in text
        and f".{n}." not in text
    )
    assert not missing, f"config example leaves out: {missing}"


def test_environment_variable_overrides_file(
    example_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACGS_CONSOLE__PROMETHEUS__URL", "http://127.0.0.1:19090")
    monkeypatch.setenv("ACGS_CONSOLE__THRESHOLDS__P99_LATENCY_MS_CRITICAL", "6.5")
    cfg, path = load_config(example_file)
    assert path == example_file
    assert cfg.prometheus.url == "http://127.0.0.1:19090"
    assert cfg.thresholds.p99_latency_ms_critical == 6.5
    # Untouched fields keep the file's value.
    assert isinstance(cfg.traffic, HAProxySwitch)


def test_search_order(example_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other.toml"
    data = example_file.read_text().replace(
        'constitutional_hash = "cdd01ef066bc6cf2"', 'constitutional_hash = "0123456789abcdef"'
    )
    other.write_text(data)
    monkeypatch.chdir(tmp_path)  # ./acgs-console.toml is example_file
    assert load_config()[1] == Path.cwd() / "acgs-console.toml"
    monkeypatch.setenv("ACGS_CONSOLE_CONFIG", str(other))
    cfg, path = load_config()
    assert path == other and cfg.constitutional_hash == "0123456789abcdef"
    assert load_config(example_file)[1] == example_file  # --config wins


def test_user_config_dir_is_the_last_place_looked(
    example_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from console.config import user_config_path

    monkeypatch.delenv("ACGS_CONSOLE_CONFIG", raising=False)
    # conftest points XDG_CONFIG_HOME at a throw-away directory: never the operator's own.
    xdg = Path(os.environ["XDG_CONFIG_HOME"])
    user_file = user_config_path()
    assert user_file.is_relative_to(xdg)
    assert user_file == xdg / "acgs-console" / "acgs-console.toml"
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    try:
        # Nothing anywhere: a clear error that lists where it looked.
        with pytest.raises(ConfigError) as caught:
            load_config()
        first = caught.value.problems[0]
        assert first.file == "(none found)" and str(user_file) in first.message

        user_file.parent.mkdir(parents=True, exist_ok=True)
        user_file.write_text(
            example_file.read_text().replace(
                'constitutional_hash = "cdd01ef066bc6cf2"',
                'constitutional_hash = "00000000000000aa"',
            )
        )
        cfg, path = load_config()
        assert path == user_file and cfg.constitutional_hash == "00000000000000aa"

        # ./acgs-console.toml comes before the user config dir.
        (empty / "acgs-console.toml").write_text(example_file.read_text())
        cfg, path = load_config()
        assert path == empty / "acgs-console.toml"
        assert cfg.constitutional_hash == "cdd01ef066bc6cf2"
    finally:
        user_file.unlink(missing_ok=True)


def test_environment_variables_reach_nested_environment_fields(
    example_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACGS_CONSOLE__ENVIRONMENTS__GREEN__PROMETHEUS_LABEL", "green-canary")
    monkeypatch.setenv("ACGS_CONSOLE__ENVIRONMENTS__BLUE__REDIS__URL", "redis://127.0.0.1:7000/1")
    cfg, _ = load_config(example_file)
    assert cfg.env("green").prometheus_label == "green-canary"
    blue_redis = cfg.env("blue").redis
    assert blue_redis is not None and blue_redis.url == "redis://127.0.0.1:7000/1"
    # The rest of each environment still comes from the file.
    assert len(cfg.env("green").services) == 9 and len(cfg.env("blue").services) == 9
    assert cfg.env("blue").prometheus_label != "green-canary"


def test_passwords_are_secret(example_file: Path) -> None:
    text = example_file.read_text().replace(
        '# password = "change-me"', 'password = "hunter2-very-secret"', 1
    )
    example_file.write_text(text)
    cfg, _ = load_config(example_file)
    redis = cfg.env("blue").redis
    assert redis is not None and redis.password is not None
    assert redis.password.get_secret_value() == "hunter2-very-secret"
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.model_dump())
    result = run_cli("config", "validate", str(example_file))
    assert result.returncode == 0 and "hunter2" not in result.stdout + result.stderr


MALFORMED = {
    # name: (transform of the example text, field path expected, the bad value as shown,
    #        words the fix must contain)
    "toml-syntax": (
        lambda t: t.replace("[thresholds]", "[thresholds"),
        "(syntax)",
        "(at line ",
        "TOML",
    ),
    "bad-number": (
        lambda t: t.replace("p99_latency_ms_critical = 5.0", 'p99_latency_ms_critical = "five"'),
        "thresholds.p99_latency_ms_critical",
        "'five'",
        "number",
    ),
    "bad-url": (
        lambda t: t.replace('base_url = "http://10.0.2.13:8000"', 'base_url = "10.0.2.13:8000"'),
        "environments.green.services.test_orchestrator.base_url",
        "'10.0.2.13:8000'",
        "http://",
    ),
    "unknown-key": (
        lambda t: t.replace("[rollback]", "[rollback]\nautomatik = true"),
        "rollback.automatik",
        "True",
        "spelling",
    ),
    "bad-switch-kind": (
        lambda t: t.replace('kind = "haproxy"', 'kind = "nginx"', 1),
        "traffic.kind",
        "'nginx'",
        "'haproxy'",
    ),
    "missing-green": (
        lambda t: (
            t.split("# --- the green environment")[0]
            + "[prometheus"
            + t.split("\n[prometheus", 1)[1]
        ),
        "environments",
        "a table with keys blue",
        "green",
    ),
    "password-in-dsn": (
        lambda t: t.replace(
            'primary_dsn = "host=10.0.1.30 port=5432 user=acgs dbname=acgs"',
            'primary_dsn = "host=10.0.1.30 user=acgs password=s3cr3t-pw"',
            1,
        ),
        "environments.blue.postgres.primary_dsn",
        "'host=10.0.1.30 user=acgs password=(hidden)'",
        "password",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_config_gets_a_clear_error(case: str, example_file: Path) -> None:
    transform, field, bad_value, fix_words = MALFORMED[case]
    text = transform(example_file.read_text())
    assert text != example_file.read_text(), "the transform must change the file"
    example_file.write_text(text)

    with pytest.raises(ConfigError) as caught:
        load_config(example_file)
    problems = caught.value.problems
    named = [p for p in problems if p.field.startswith(field)]
    assert named, problems
    assert all(p.file == str(example_file) for p in problems)
    # The bad value itself is shown (a password never is).
    assert any(bad_value in p.value for p in named), named

    result = run_cli("config", "validate", str(example_file))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(example_file) in result.stderr
    assert field in result.stderr
    assert f"got {bad_value}" in result.stderr or f"got {named[0].value}" in result.stderr
    assert bad_value in result.stderr
    assert "fix:" in result.stderr and fix_words in result.stderr
    assert "s3cr3t" not in result.stderr


def test_a_missing_switch_kind_names_the_kind_field(example_file: Path) -> None:
    example_file.write_text(example_file.read_text().replace('kind = "haproxy"\n', "", 1))
    with pytest.raises(ConfigError) as caught:
        load_config(example_file)
    (problem,) = [p for p in caught.value.problems if p.field.startswith("traffic")]
    assert (problem.field, problem.value) == ("traffic.kind", "nothing")
    assert "'haproxy'" in problem.fix


def test_a_query_that_does_not_cover_both_environments_is_refused(example_file: Path) -> None:
    """One PromQL query per metric answers for both environments: it must group by label."""
    text = example_file.read_text()
    good = 'requests_per_second = "sum by ($label) (rate(acgs_requests_total{$selector}[$window]))"'
    assert good in text
    example_file.write_text(
        text.replace(good, 'requests_per_second = "sum(rate(acgs_requests_total[1m]))"', 1)
    )
    with pytest.raises(ConfigError) as caught:
        load_config(example_file)
    (problem,) = caught.value.problems
    assert problem.field == "prometheus.queries"
    assert "requests_per_second" in problem.fix and "by ($label)" in problem.fix


def test_missing_file_is_named(tmp_path: Path) -> None:
    result = run_cli("config", "validate", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "nope.toml" in result.stderr and "no such file" in result.stderr


def test_error_names_the_environment_variable(example_file: Path) -> None:
    result = run_cli(
        "config", "validate", str(example_file), env={"ACGS_CONSOLE__REFRESH_INTERVAL_S": "soon"}
    )
    assert result.returncode == 2
    assert "$ACGS_CONSOLE__REFRESH_INTERVAL_S" in result.stderr


def test_example_round_trips_through_toml() -> None:
    data = tomllib.loads(example_config())
    assert set(data["environments"]) == {"blue", "green"}
    assert len(data["environments"]["green"]["services"]) == 9
