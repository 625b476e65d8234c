"""The console's configuration: pydantic models, TOML loading, clear errors.

Where the configuration comes from, first match wins for the file:

1. ``--config PATH``
2. ``$ACGS_CONSOLE_CONFIG``
3. ``./acgs-console.toml``
4. ``<user config dir>/acgs-console/acgs-console.toml``

Environment variables ``ACGS_CONSOLE__SECTION__FIELD`` override what the
file says (``ACGS_CONSOLE__PROMETHEUS__URL=http://...``).

A malformed configuration raises :class:`ConfigError`, whose problems each
name the file, the field path, the bad value and what would be valid; the
CLI prints them and exits 2, never a traceback.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from backends.models import DEFAULT_CONSTITUTIONAL_HASH, ORCHESTRATORS, Environment

ENV_PREFIX = "ACGS_CONSOLE__"
CONFIG_ENV_VAR = "ACGS_CONSOLE_CONFIG"
CONFIG_FILE_NAME = "acgs-console.toml"


class Section(BaseModel):
    """Base of every config section: unknown keys are errors (typos get caught)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


# --- environments -----------------------------------------------------------


class ServiceEndpoint(Section):
    """One orchestrator service."""

    base_url: str
    """Base URL of the service, e.g. ``http://10.0.1.5:8000``."""
    health_path: str = "/health"
    """Path of the health endpoint, joined to base_url."""

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. 'http://127.0.0.1:8000'")
        return v.rstrip("/")

    @field_validator("health_path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/', e.g. '/health'")
        return v

    @property
    def health_url(self) -> str:
        """The full health URL."""
        return self.base_url + self.health_path


class RedisEndpoint(Section):
    """An environment's Redis."""

    url: str
    """``redis://host:port/db`` (or ``rediss://``); put the password in ``password``, not in the URL."""
    password: SecretStr | None = None
    """Redis AUTH password (never shown)."""
    username: str | None = None
    """Redis ACL user name, if any."""
    timeout_s: float = Field(1.0, gt=0)
    """Per-probe timeout in seconds."""

    @field_validator("url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "must be a redis:// rediss:// or unix:// URL, e.g. 'redis://127.0.0.1:6379/0'"
            )
        if "@" in v.split("//", 1)[1].split("/", 1)[0]:
            raise ValueError("must not carry credentials; set 'password' (and 'username') instead")
        return v


class PostgresEndpoint(Section):
    """An environment's PostgreSQL primary and its streaming replicas."""

    primary_dsn: str
    """libpq DSN of the primary, e.g. ``host=10.0.2.5 port=5432 user=acgs dbname=acgs`` (no password here)."""
    replica_dsns: list[str] = []
    """DSNs of the replicas, checked with ``pg_is_in_recovery()``."""
    password: SecretStr | None = None
    """Password for the DSNs (never shown)."""
    expected_replicas: int = Field(1, ge=0)
    """How many streaming replicas ``pg_stat_replication`` must list."""
    max_lag_bytes: int = Field(16 * 1024 * 1024, ge=0)
    """Allowed replication lag in bytes (``pg_wal_lsn_diff``)."""
    max_lag_seconds: float = Field(5.0, ge=0)
    """Allowed replay lag in seconds."""
    timeout_s: float = Field(2.0, gt=0)
    """Connect and query timeout in seconds."""

    @field_validator("primary_dsn", "replica_dsns")
    @classmethod
    def _no_password(cls, v: Any) -> Any:
        for dsn in v if isinstance(v, list) else [v]:
            if "password" in dsn.lower() or "@" in dsn:
                raise ValueError("must not carry a password; set 'password' instead")
        return v


class EnvironmentConfig(Section):
    """One side of the deployment (blue or green)."""

    services: dict[str, ServiceEndpoint]
    """The orchestrators, by name (the runbook's nine)."""
    redis: RedisEndpoint | None = None
    """The environment's Redis; absent shows as "not configured", never as passing."""
    postgres: PostgresEndpoint | None = None
    """The environment's PostgreSQL; absent shows as "not configured", never as passing."""
    prometheus_label: str | None = None
    """Value of the Prometheus environment label for this environment (default: its name)."""

    @field_validator("services")
    @classmethod
    def _nine(cls, v: dict[str, ServiceEndpoint]) -> dict[str, ServiceEndpoint]:
        if not v:
            raise ValueError("needs the orchestrator services: " + ", ".join(ORCHESTRATORS))
        return v


# --- metrics ------------------------------------------------------------------

_BOTH = "$selector"


class PrometheusQueries(Section):
    """PromQL templates, one per metric covering both environments.

    Placeholders: ``$selector`` (label matchers selecting both environments),
    ``$label`` (the environment label name), ``$window`` (the rate window).
    Every query must group ``by ($label)`` so one query answers for both.
    """

    p99_latency_ms: str = (
        "1000 * histogram_quantile(0.99, sum by ($label, le) "
        "(rate(acgs_request_duration_seconds_bucket{$selector}[$window])))"
    )
    """P99 latency in milliseconds."""
    requests_per_second: str = "sum by ($label) (rate(acgs_requests_total{$selector}[$window]))"
    """Requests per second."""
    error_rate: str = (
        '(sum by ($label) (rate(acgs_requests_total{$selector,status_code=~"5.."}[$window])) '
        "or 0 * sum by ($label) (rate(acgs_requests_total{$selector}[$window]))) "
        "/ sum by ($label) (rate(acgs_requests_total{$selector}[$window]))"
    )
    """Share of 5xx responses (0..1)."""
    cache_hit_rate: str = "avg by ($label) (acgs_cache_hit_rate{$selector})"
    """Cache hit rate (0..1)."""
    compliance_score: str = "min by ($label) (acgs_constitutional_compliance_score{$selector})"
    """Constitutional compliance score gauge (0..100)."""
    hash_validation_failure_rate: str = (
        "(sum by ($label) (rate(acgs_constitutional_hash_validation_failures_total{$selector}[$window])) "
        "or 0 * sum by ($label) (rate(acgs_requests_total{$selector}[$window]))) "
        "/ sum by ($label) (rate(acgs_requests_total{$selector}[$window]))"
    )
    """Share of requests failing constitutional hash validation (0..1)."""
    auth_failures_per_minute: str = (
        "60 * (sum by ($label) (rate(acgs_authentication_failures_total{$selector}[$window])) "
        "or 0 * sum by ($label) (rate(acgs_requests_total{$selector}[$window])))"
    )
    """Failed authentication attempts per minute."""

    @model_validator(mode="after")
    def _placeholders(self) -> PrometheusQueries:
        for name, template in self.model_dump().items():
            if _BOTH not in template or "$label" not in template:
                raise ValueError(
                    f"query {name!r} must use $selector and group 'by ($label)' "
                    "so one query covers both environments"
                )
        return self


class PrometheusConfig(Section):
    """Where metrics come from."""

    url: str | None = None
    """Prometheus base URL; empty means: scrape the services' /metrics directly."""
    environment_label: str = "environment"
    """The label that tells the environments apart."""
    extra_selector: str = ""
    """Extra label matchers added to every query, e.g. ``job="acgs"``."""
    window: str = "1m"
    """Rate window for the queries."""
    timeout_s: float = Field(2.0, gt=0)
    """Query timeout in seconds."""
    max_sample_age_s: float = Field(30.0, gt=0)
    """A sample older than this shows as stale; keep it at least twice the scrape interval."""
    fetch_interval_s: float = Field(5.0, gt=0, le=300)
    """Seconds between metric fetches (the PromQL queries, or the services' /metrics
    when url is empty), on their own cadence beside the 1 s health and hash probes
    (Prometheus itself scrapes every 15 s by default). Never more often than
    refresh_interval_s. Each value keeps the time it was sampled and turns stale,
    never passing, past its age: max_sample_age_s for Prometheus, and for the
    direct scrape thresholds.stale_after_s or twice this interval, whichever is
    longer."""
    queries: PrometheusQueries = PrometheusQueries()
    """The PromQL templates."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        assert v is not None
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL like 'http://127.0.0.1:9090', or empty")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _cadence(self) -> PrometheusConfig:
        if self.url and self.fetch_interval_s >= self.max_sample_age_s:
            raise ValueError(
                f"fetch_interval_s ({self.fetch_interval_s:g}) must be shorter than "
                f"max_sample_age_s ({self.max_sample_age_s:g}), or every value would turn "
                "stale before the next fetch"
            )
        return self


# --- traffic switch -----------------------------------------------------------


class HAProxySwitch(Section):
    """Move traffic with the HAProxy runtime API (``set weight``, ``show servers state``)."""

    kind: Literal["haproxy"] = "haproxy"
    admin: str
    """The admin socket: a unix socket path, or ``host:port`` for a TCP stats socket."""
    backend: str = "acgs"
    """The backend holding the blue and green servers."""
    blue_server: str = "blue"
    """The blue server's name in that backend."""
    green_server: str = "green"
    """The green server's name in that backend."""
    timeout_s: float = Field(2.0, gt=0)
    """Per-command timeout in seconds."""


class CommandSwitch(Section):
    """Move traffic with the site's own command (Istio, an ALB, a script)."""

    kind: Literal["command"] = "command"
    set_argv: list[str]
    """Command as an argv list; ``{green_percentage}`` is replaced by 0..100."""
    read_argv: list[str] | None = None
    """Optional read-back command printing the green percentage (a number) on stdout."""
    cwd: Path | None = None
    """Working directory for the commands."""
    timeout_s: float = Field(10.0, gt=0)
    """Timeout per command run."""

    @field_validator("set_argv")
    @classmethod
    def _template(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(
                "needs a command, e.g. ['./scripts/load-balancer-switch.sh', '--green-percentage', '{green_percentage}']"
            )
        if not any("{green_percentage}" in a for a in v):
            raise ValueError("must contain '{green_percentage}' in one argument")
        return v


class SandboxSwitch(Section):
    """The sandbox's in-process router (the embedded default)."""

    kind: Literal["sandbox"] = "sandbox"
    control_url: str
    """The sandbox control endpoint."""


TrafficSwitchConfig = Annotated[
    HAProxySwitch | CommandSwitch | SandboxSwitch, Field(discriminator="kind")
]


# --- thresholds ---------------------------------------------------------------


class Thresholds(Section):
    """The runbook's targets and its "Monitoring Thresholds and Alerts"."""

    p99_latency_ms_critical: float = 5.0
    """Critical: P99 latency above this (ms) ..."""
    p99_latency_critical_for_s: float = 120.0
    """... for longer than this (s)."""
    p99_latency_ms_warning: float = 4.0
    """Warning: P99 latency above this (ms) ..."""
    p99_latency_warning_for_s: float = 300.0
    """... for longer than this (s)."""
    rps_critical: float = 100.0
    """Critical: throughput below this (requests/s) ..."""
    rps_critical_for_s: float = 60.0
    """... for longer than this (s)."""
    rps_warning: float = 120.0
    """Warning: throughput below this ..."""
    rps_warning_for_s: float = 180.0
    """... for longer than this (s)."""
    cache_hit_critical: float = 0.85
    """Critical: cache hit rate below this (0..1) ..."""
    cache_hit_critical_for_s: float = 300.0
    """... for longer than this (s)."""
    cache_hit_warning: float = 0.87
    """Warning: cache hit rate below this ..."""
    cache_hit_warning_for_s: float = 600.0
    """... for longer than this (s)."""
    compliance_critical: float = 100.0
    """Critical: compliance score below this (%)."""
    compliance_warning: float = 99.0
    """Warning: compliance score below this (%)."""
    hash_failure_rate_warning: float = 0.01
    """Warning: share of requests failing hash validation above this."""
    auth_failures_per_minute_critical: float = 10.0
    """Critical: failed authentication attempts per minute above this."""
    error_rate_warning: float = Field(0.001, ge=0, le=1)
    """Dashboard level only: share of 5xx responses (0..1) above this shows as warning
    (the runbook asks for "no increase in error rates"; it names no number)."""
    error_rate_critical: float = Field(0.01, ge=0, le=1)
    """Dashboard level only: share of 5xx responses (0..1) above this shows as critical."""
    security_score_critical: float = 90.0
    """Critical: security score below this (/100)."""
    security_score_target: float = 98.0
    """Pre-deployment target security score (/100)."""
    security_score_minimum: float = 95.0
    """Success criterion: security score maintained at least this (/100)."""
    rollback_budget_s: float = 30.0
    """The runbook's rollback promise in seconds."""
    stale_after_s: float = Field(5.0, gt=0)
    """A sweep older than this shows as stale."""

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.p99_latency_ms_warning > self.p99_latency_ms_critical:
            raise ValueError("p99_latency_ms_warning must not exceed p99_latency_ms_critical")
        if self.rps_warning < self.rps_critical:
            raise ValueError("rps_warning must be at least rps_critical")
        if self.cache_hit_warning < self.cache_hit_critical:
            raise ValueError("cache_hit_warning must be at least cache_hit_critical")
        if self.error_rate_warning > self.error_rate_critical:
            raise ValueError("error_rate_warning must not exceed error_rate_critical")
        return self


# --- stores, coordination, ui -------------------------------------------------


class AuditConfig(Section):
    """Where the hash-chained audit trail lives."""

    sqlite_path: Path | None = None
    """SQLite file (default: the user state directory)."""
    postgres_dsn: str | None = None
    """PostgreSQL DSN; when set, the audit trail lives there instead of SQLite."""
    postgres_password: SecretStr | None = None
    """Password for the audit DSN (never shown)."""
    spool_path: Path | None = None
    """Local spool for records written while the store is unreachable (default: state dir)."""


class RollbackConfig(Section):
    """Emergency and automatic rollback."""

    automatic: bool = False
    """Run the emergency rollback when a critical alert fires during a monitor window."""
    manual_fallback: str = (
        "Set the green server's weight to 0 on the load balancer by hand, "
        "then call the on-call SRE lead."
    )
    """What to tell the operator when the switch itself fails."""
    retries: int = Field(3, ge=0)
    """Retries (with backoff) when the switch fails."""
    retry_backoff_s: float = Field(0.2, gt=0, le=10)
    """Wait before the first retry (s); it doubles after each failure, up to 2 s."""
    verify_window_s: float = Field(1.0, gt=0, le=60)
    """Requests must reach blue, and none reach green, for this long (s) to count as verified."""
    verify_timeout_s: float = Field(4.0, gt=0, le=120)
    """Give up confirming that requests reach blue after this long (s): then it is unverified."""
    report_dir: Path | None = None
    """Where incident reports (Markdown + JSON) are written (default: <state dir>/incidents)."""


class CoordinationConfig(Section):
    """Several operators at once (lease lock, shared state)."""

    redis_url: str | None = None
    """Redis for the lease lock and pub/sub; empty: a local lock file (single host)."""
    password: SecretStr | None = None
    """Password for that Redis (never shown)."""
    lease_ms: int = Field(15000, ge=1000)
    """Lease length in milliseconds."""
    lock_file: Path | None = None
    """Local lock file (default: state dir)."""
    four_eyes_gates: list[str] = ["switch-100", "decommission-blue"]
    """Gates that need a second, different operator."""
    deployment: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """Name of what the lease covers; every console driving the same estate must use the
    same one (default: derived from the traffic switch's target, so consoles moving the
    same load balancer share one lease)."""


class CommandSpec(Section):
    """A site-specific command a runbook step runs."""

    argv: list[str]
    """The command as an argv list (never a shell string)."""
    cwd: Path | None = None
    """Working directory."""
    timeout_s: float = Field(600.0, gt=0)
    """Timeout in seconds."""


class SecurityConfig(Section):
    """Where the site's security tools leave their output (pre-deployment "Security Validation")."""

    vulnerability_report: Path | None = None
    """Trivy (``--format json``) or Grype (``-o json``) report; critical and high findings are counted."""
    sbom: Path | None = None
    """CycloneDX or SPDX JSON SBOM; it must parse and list components."""
    security_score_file: Path | None = None
    """Security score out of 100: a plain number (``97.5``, ``97.5/100``) or JSON ``{"score": 97.5}``."""


class UIConfig(Section):
    """Look and keys."""

    theme: str = "acgs-dark"
    """acgs-dark, acgs-light or acgs-high-contrast (or any Textual theme)."""
    keymap: dict[str, str] = {}
    """Binding id -> keys, e.g. ``{"rollback" = "f12"}``."""


class SandboxInfo(Section):
    """Written by ``acgs-console sandbox up``: what the sandbox started."""

    control_url: str | None = None
    """The sandbox control endpoint (faults, split)."""
    real_engines: list[str] = []
    """Engines running for real (haproxy, prometheus, redis, postgresql)."""


# --- the whole ----------------------------------------------------------------


class AppConfig(BaseSettings):
    """The whole console configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        use_attribute_docstrings=True,
    )

    constitutional_hash: str = DEFAULT_CONSTITUTIONAL_HASH
    """The constitutional hash every service must carry."""
    refresh_interval_s: float = Field(1.0, ge=0.2, le=60)
    """Seconds between sweeps."""
    probe_timeout_s: float = Field(1.0, gt=0, le=30)
    """Per-request timeout of the health probes."""
    operator: str | None = None
    """Override the operator identity (default: user@host, from SSH where present)."""
    environments: dict[Environment, EnvironmentConfig]
    """blue and green."""
    prometheus: PrometheusConfig = PrometheusConfig()
    """Metrics source."""
    traffic: TrafficSwitchConfig
    """How traffic moves between blue and green."""
    thresholds: Thresholds = Thresholds()
    """The runbook's thresholds."""
    audit: AuditConfig = AuditConfig()
    """The audit store."""
    runbook: Path | None = None
    """A runbook data file (default: the one shipped with the console)."""
    rollback: RollbackConfig = RollbackConfig()
    """Rollback behaviour."""
    coordination: CoordinationConfig = CoordinationConfig()
    """Multi-operator coordination."""
    commands: dict[str, CommandSpec] = {}
    """Site commands for runbook steps, by step id."""
    monitor_windows: dict[str, float] = {}
    """Monitor window lengths in seconds by runbook step id, overriding the runbook's (a rehearsal may shorten them)."""
    security: SecurityConfig = SecurityConfig()
    """The security tools' output files."""
    ui: UIConfig = UIConfig()
    """Look and keys."""
    sandbox: SandboxInfo | None = None
    """Present when the config was written by the sandbox."""

    @field_validator("constitutional_hash")
    @classmethod
    def _hash(cls, v: str) -> str:
        if len(v) != 16 or any(c not in "0123456789abcdef" for c in v):
            raise ValueError("must be 16 lowercase hex digits, e.g. 'cdd01ef066bc6cf2'")
        return v

    @field_validator("environments")
    @classmethod
    def _both(cls, v: dict[Environment, EnvironmentConfig]) -> dict[Environment, EnvironmentConfig]:
        missing = [e.value for e in Environment if e not in v]
        if missing:
            raise ValueError(f"needs both blue and green; missing: {', '.join(missing)}")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment variables override the file (passed as init kwargs).
        return (env_settings, init_settings)

    def env(self, environment: Environment | str) -> EnvironmentConfig:
        """One environment's configuration."""
        return self.environments[Environment(environment)]

    def prometheus_label_of(self, environment: Environment) -> str:
        """The Prometheus label value of an environment."""
        return self.env(environment).prometheus_label or environment.value


# --- loading and errors -------------------------------------------------------


class ConfigProblem(BaseModel):
    """One thing wrong with a configuration."""

    file: str
    field: str
    value: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message} (got {self.value}). Fix: {self.fix}"


class ConfigError(Exception):
    """A configuration that cannot be used; carries every problem found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def user_config_path() -> Path:
    """``<user config dir>/acgs-console/acgs-console.toml``."""
    import platformdirs

    return Path(platformdirs.user_config_dir("acgs-console")) / CONFIG_FILE_NAME


def find_config(explicit: Path | str | None = None) -> Path | None:
    """The config file to use, by the documented order; None when there is none."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV_VAR)
    if from_env:
        return Path(from_env)
    for candidate in (Path.cwd() / CONFIG_FILE_NAME, user_config_path()):
        if candidate.is_file():
            return candidate
    return None


_FIXES = {
    "missing": "add this field",
    "extra_forbidden": "remove it or check its spelling (see `acgs-console config example`)",
    "literal_error": "use one of the allowed values",
    "union_tag_invalid": "set kind to 'haproxy', 'command' or 'sandbox'",
    "union_tag_not_found": "add kind = 'haproxy', 'command' or 'sandbox'",
    "float_parsing": "use a number",
    "int_parsing": "use a whole number",
    "bool_parsing": "use true or false",
    "string_type": "use a quoted string",
    "list_type": 'use a list, e.g. ["a", "b"]',
    "dict_type": "use a table",
    "model_type": "use a table",
    "greater_than": "use a larger number",
    "greater_than_equal": "use a larger number",
    "less_than_equal": "use a smaller number",
    "enum": "use 'blue' or 'green'",
}


def _env_var_for(loc: tuple[str | int, ...]) -> str | None:
    name = ENV_PREFIX + "__".join(str(p).upper() for p in loc)
    for key in os.environ:
        if key.upper() == name:
            return key
    return None


def _redact(text: str) -> str:
    """Hide anything that looks like a credential inside a shown value."""
    text = re.sub(
        r"(password\s*=\s*)(?!\(hidden\))('[^']*'|\S+)", r"\1(hidden)", text, flags=re.IGNORECASE
    )
    return re.sub(r"(//[^:/@\s]*:)(?!\(hidden\)@)[^@\s]*@", r"\1(hidden)@", text)


def _shown(raw: Any) -> str:
    """``repr`` of a bad value with credentials hidden first, so the quoting stays whole."""
    if isinstance(raw, str):
        return repr(_redact(raw))
    if isinstance(raw, list | tuple):
        return "[" + ", ".join(_shown(item) for item in raw) + "]"
    return repr(raw)


def _problems(err: ValidationError, source: str) -> list[ConfigProblem]:
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        # Discriminated unions put the tag in the path; the operator wrote no such key.
        loc = tuple(p for p in loc if p not in ("haproxy", "command", "sandbox") or p == loc[0])
        field = ".".join(str(p) for p in loc) or "(top level)"
        env_var = _env_var_for(loc)
        raw = e.get("input")
        shown = "nothing" if e["type"] == "missing" else _shown(raw)
        if isinstance(raw, dict):
            shown = (
                "a table with keys " + ", ".join(sorted(map(str, raw))) if raw else "an empty table"
            )
        if "password" in field.lower():
            shown = "(hidden)"
        shown = _redact(shown)
        msg = str(e["msg"]).removeprefix("Value error, ")
        fix = _FIXES.get(e["type"], "see `acgs-console config example`")
        if e["type"] == "value_error":
            msg, fix = "invalid value", msg
        if e["type"] == "literal_error":
            fix = "use " + msg.split("Input should be ", 1)[-1]
        if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            # The bad value is the tag the operator wrote (or left out), not the whole table.
            ctx = e.get("ctx") or {}
            key = str(ctx.get("discriminator", "kind")).strip("'")
            field = f"{field}.{key}"
            env_var = _env_var_for((*loc, key)) or env_var
            if e["type"] == "union_tag_invalid":
                shown = _shown(ctx.get("tag"))
                msg = f"unknown {key}"
            else:
                shown = "nothing"
                msg = f"{key} is missing"
        problems.append(
            ConfigProblem(
                file=f"${env_var}" if env_var else source,
                field=field,
                value=shown,
                message=msg,
                fix=fix,
            )
        )
    return problems


def load_config(explicit: Path | str | None = None) -> tuple[AppConfig, Path | None]:
    """Load, validate and return the configuration and the file it came from.

    Raises:
        ConfigError: naming file, field, value and fix for every problem.
    """
    path = find_config(explicit)
    data: dict[str, Any] = {}
    source = "(environment)"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                [
                    ConfigProblem(
                        file=source,
                        field="(file)",
                        value="missing",
                        message="no such file",
                        fix="check the path, or write one with `acgs-console config example`",
                    )
                ]
            ) from None
        except OSError as exc:
            raise ConfigError(
                [
                    ConfigProblem(
                        file=source,
                        field="(file)",
                        value=exc.strerror or str(exc),
                        message="cannot read the file",
                        fix="check its permissions",
                    )
                ]
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(
                [
                    ConfigProblem(
                        file=source,
                        field="(file)",
                        value="binary data",
                        message="not UTF-8 text",
                        fix="save the file as UTF-8 TOML",
                    )
                ]
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                [
                    ConfigProblem(
                        file=source,
                        field="(syntax)",
                        value=str(exc),
                        message="not valid TOML",
                        fix="correct the TOML syntax at the line and column shown",
                    )
                ]
            ) from None
    try:
        cfg = AppConfig(**data)
    except ValidationError as exc:
        problems = _problems(exc, source)
        if path is None and any(p.field == "environments" for p in problems):
            problems.insert(
                0,
                ConfigProblem(
                    file="(none found)",
                    field="(file)",
                    value="no config file",
                    message=f"looked in --config, ${CONFIG_ENV_VAR}, ./{CONFIG_FILE_NAME}, {user_config_path()}",
                    fix="run `acgs-console --sandbox`, or write one with `acgs-console config example`",
                ),
            )
        raise ConfigError(problems) from None
    return cfg, path
