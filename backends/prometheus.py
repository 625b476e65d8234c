"""Metrics from Prometheus, through prometheus-api-client.

This module owns :class:`PrometheusSource`: it renders the configured PromQL
templates (``$selector``, ``$label``, ``$window``; :class:`string.Template`),
sends ONE instant query per metric that answers for both environments at once
(the templates group ``by ($label)``), and splits each answer by the
environment label into :class:`~backends.models.MetricValue` objects.

Nothing here turns missing data into a number: an empty answer, NaN, Inf, an
HTTP error, a refused connection or a timeout is ``value=None`` with the reason
in ``error``.

``sampled_at`` is the sample's own time: Prometheus stamps an instant-query
answer with the evaluation time, which is "now" even when the data behind it
stopped arriving minutes ago, so one extra query per fetch
(:data:`DEFAULT_FRESHNESS_QUERY`) reads the newest scrape time of each
environment's request counter, and a value is as old as that.

prometheus-api-client is blocking and slow to import (requests, urllib3), so it
is imported on the first fetch, inside a worker thread, never at module import:
the console's first frame does not wait for it. Queries run on the source's own
small thread pool rather than asyncio's default one, so a black-holed Prometheus
can only tie up its own threads, never those other probes (PostgreSQL) need.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from string import Template
from typing import Any

from backends.metrics import METRIC_NAMES, metric_value
from backends.models import Environment, EnvironmentMetrics, MetricValue, utcnow

DEFAULT_FRESHNESS_QUERY = "min by ($label) (timestamp(acgs_requests_total{$selector}))"
"""Newest scrape time per environment (the oldest of its series' newest samples)."""

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_GRACE_S = 0.5
"""How long past its own timeout a query thread may take before the fetch stops waiting."""


def _promql_string(text: str) -> str:
    """Escape text for a double-quoted PromQL string literal."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def build_selector(label: str, values: list[str], extra_selector: str = "") -> str:
    """Label matchers selecting every given environment (without braces).

    Args:
        label: The environment label name.
        values: The label values of the environments.
        extra_selector: More matchers, e.g. ``job="acgs"`` (braces optional).

    Returns:
        E.g. ``environment=~"blue|green",job="acgs"``.
    """
    alternatives = "|".join(re.escape(v) for v in values)
    matchers = [f'{label}=~"{_promql_string(alternatives)}"']
    extra = extra_selector.strip().removeprefix("{").removesuffix("}").strip().strip(",")
    if extra:
        matchers.append(extra)
    return ",".join(matchers)


def _describe(exc: BaseException, timeout_s: float) -> str:
    """Name why a query failed, in words an operator can act on."""
    text = str(exc)
    kind = type(exc).__name__
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or (
        "Connection refused" in text or "[Errno 111]" in text
    ):
        return "connection refused"
    if "Timeout" in kind or "timed out" in text.lower():
        return f"timeout after {timeout_s:g} s"
    if kind == "PrometheusApiClientException":
        match = re.match(r"HTTP Status Code (\d+) \((.*)\)$", text, re.S)
        if match:
            status, raw = match.groups()
            detail = raw
            try:
                payload = json.loads(_decode_bytes_repr(raw))
                detail = str(payload.get("error", payload))
            except (ValueError, AttributeError):
                pass
            return f"HTTP {status}: {detail[:200]}"
        return text[:200]
    if kind == "ConnectionError":
        return "cannot connect: " + text[:200]
    if isinstance(exc, ValueError | KeyError | TypeError):
        return f"not a Prometheus API answer ({kind}: {text[:120]})"
    return f"{kind}: {text[:200]}"


def _decode_bytes_repr(raw: str) -> str:
    """Text of the ``repr`` of a bytes object (how prometheus-api-client quotes a body)."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else raw


@dataclass(frozen=True, slots=True)
class _Sample:
    value: float | None
    at: datetime | None
    error: str | None


@dataclass(frozen=True, slots=True)
class _Answer:
    by_env: dict[Environment, _Sample]
    error: str | None


class PrometheusSource:
    """Both environments' metrics from Prometheus, one query per metric."""

    name = "prometheus"

    def __init__(
        self,
        url: str,
        queries: Mapping[str, str],
        environment_label: str,
        labels: Mapping[Environment, str],
        extra_selector: str = "",
        window: str = "1m",
        timeout_s: float = 2.0,
        max_age_s: float = 5.0,
        freshness_query: str | None = DEFAULT_FRESHNESS_QUERY,
    ) -> None:
        """Create the source (nothing is imported or connected until the first fetch).

        Args:
            url: Prometheus base URL, e.g. ``http://127.0.0.1:9090``.
            queries: EnvironmentMetrics field name -> PromQL template.
            environment_label: The label telling the environments apart.
            labels: Each environment's value of that label.
            extra_selector: Matchers added to ``$selector``, e.g. ``job="acgs"``.
            window: The rate window, ``$window`` (a PromQL duration).
            timeout_s: Per-query timeout (also sent to Prometheus as its own).
            max_age_s: A value whose newest sample is older than this is stale.
            freshness_query: Template returning each environment's newest sample time
                (unix seconds); None stamps values with the evaluation time instead.

        Raises:
            ValueError: On a query for a field EnvironmentMetrics does not have, or a
                label name PromQL would not accept (configuration errors, not observations).
        """
        unknown = sorted(set(queries) - set(METRIC_NAMES))
        if unknown:
            raise ValueError(
                f"no such metric {', '.join(unknown)}; valid: {', '.join(METRIC_NAMES)}"
            )
        if not _LABEL_NAME.match(environment_label):
            raise ValueError(f"environment label {environment_label!r} is not a PromQL label name")
        self.url = url.rstrip("/")
        self.environment_label = environment_label
        self.labels = {env: labels.get(env, env.value) for env in Environment}
        self._env_of = {value: env for env, value in self.labels.items()}
        self.window = window
        self.timeout_s = timeout_s
        self.max_age_s = max_age_s
        self.selector = build_selector(
            environment_label, [self.labels[e] for e in Environment], extra_selector
        )
        self.queries = {name: self.render(template) for name, template in queries.items()}
        self.freshness_query = None if freshness_query is None else self.render(freshness_query)
        self._executor = ThreadPoolExecutor(
            max_workers=len(self.queries) + 1, thread_name_prefix="prometheus-query"
        )
        self._client: Any = None
        self._client_lock = threading.Lock()

    def render(self, template: str) -> str:
        """Fill a template's ``$selector``, ``$label`` and ``$window``.

        Args:
            template: The PromQL template.

        Returns:
            The query. Any other ``$`` (in a regex, say) is left as written.
        """
        return Template(template).safe_substitute(
            selector=self.selector, label=self.environment_label, window=self.window
        )

    # -- blocking side (worker threads) ------------------------------------------------

    def _connect(self) -> Any:
        with self._client_lock:
            if self._client is None:
                import requests
                from prometheus_api_client import PrometheusConnect
                from urllib3.util.retry import Retry

                session = requests.Session()
                # Straight to the configured URL: a proxy meant for other tools stays out.
                session.trust_env = False
                self._client = PrometheusConnect(
                    url=self.url,
                    session=session,
                    # No retries: a failed query is reported now, the next sweep asks again.
                    retry=Retry(total=0, connect=0, read=0, redirect=0, status=0),
                    timeout=self.timeout_s,
                )
            return self._client

    def _query_blocking(self, query: str) -> Any:
        client = self._connect()
        return client.custom_query(
            query,
            params={"timeout": f"{max(1, round(self.timeout_s * 1000))}ms"},
            timeout=self.timeout_s,
        )

    # -- async side ------------------------------------------------------------------

    async def _ask(self, query: str) -> _Answer:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s + _GRACE_S):
                raw = await loop.run_in_executor(self._executor, self._query_blocking, query)
        except TimeoutError:
            return _Answer({}, f"timeout after {self.timeout_s:g} s")
        except Exception as exc:  # every failure is an answer, never an exception
            return _Answer({}, _describe(exc, self.timeout_s))
        return self._split(raw)

    def _split(self, raw: Any) -> _Answer:
        """Split a result vector by environment."""
        if not isinstance(raw, list):
            return _Answer({}, f"not a Prometheus result vector ({type(raw).__name__})")
        if raw and not all(isinstance(item, dict) for item in raw):
            return _Answer({}, "query returned a scalar, not one series per environment")
        grouped: dict[Environment, list[dict[str, Any]]] = {}
        for item in raw:
            metric = item.get("metric")
            value = metric.get(self.environment_label) if isinstance(metric, dict) else None
            env = self._env_of.get(value) if isinstance(value, str) else None
            if env is not None:
                grouped.setdefault(env, []).append(item)
        by_env: dict[Environment, _Sample] = {}
        for env, items in grouped.items():
            if len(items) > 1:
                by_env[env] = _Sample(
                    None,
                    None,
                    f"{len(items)} series for {self.environment_label}="
                    f"{self.labels[env]!r}; the query must aggregate by ({self.environment_label})",
                )
                continue
            pair = items[0].get("value")
            if not (isinstance(pair, list | tuple) and len(pair) == 2):
                by_env[env] = _Sample(None, None, "not an instant vector (a range query?)")
                continue
            try:
                at = datetime.fromtimestamp(float(pair[0]), UTC)
                number = float(pair[1])
            except (TypeError, ValueError, OverflowError, OSError):
                by_env[env] = _Sample(None, None, f"unreadable sample {pair!r}")
                continue
            by_env[env] = _Sample(number, at, None)
        return _Answer(by_env, None)

    async def fetch(self) -> dict[Environment, EnvironmentMetrics]:
        """Both environments' metrics; never raises for an observation failure.

        Returns:
            Environment -> metrics; unknown values carry ``error``.
        """
        names = list(self.queries)
        asks = [self._ask(self.queries[name]) for name in names]
        if self.freshness_query is not None:
            asks.append(self._ask(self.freshness_query))
        answers = await asyncio.gather(*asks)
        by_name = dict(zip(names, answers, strict=False))
        freshness = answers[-1] if self.freshness_query is not None else None
        now = utcnow()
        out: dict[Environment, EnvironmentMetrics] = {}
        for env in Environment:
            newest = None
            if freshness is not None:
                sample = freshness.by_env.get(env)
                if sample is not None and sample.value is not None:
                    try:
                        newest = datetime.fromtimestamp(sample.value, UTC)
                    except (ValueError, OverflowError, OSError):
                        newest = None
            rps = by_name.get("requests_per_second")
            scraped = rps is not None and rps.by_env.get(env) is not None
            values: dict[str, MetricValue] = {}
            for name in METRIC_NAMES:
                values[name] = self._value(name, env, by_name.get(name), newest, scraped, now)
            out[env] = EnvironmentMetrics(**values)
        return out

    def _value(
        self,
        name: str,
        env: Environment,
        answer: _Answer | None,
        newest: datetime | None,
        scraped: bool,
        now: datetime,
    ) -> MetricValue:
        if answer is None:
            return metric_value(name, None, source=self.name, error="no query configured")
        if answer.error is not None:
            return metric_value(name, None, source=self.name, error=answer.error)
        sample = answer.by_env.get(env)
        if sample is None:
            if scraped and name != "requests_per_second":
                # The environment's services are being scraped; they just do not export this.
                return metric_value(
                    name,
                    None,
                    source=self.name,
                    error="no such series (the environment's request counter is there, "
                    "this metric is not)",
                    absent=True,
                )
            return metric_value(
                name, None, source=self.name, error=f"no data for {self.labels[env]!r}"
            )
        at = sample.at
        if at is not None and newest is not None:
            at = min(at, newest)
        return metric_value(
            name,
            sample.value,
            source=self.name,
            sampled_at=at,
            max_age_s=self.max_age_s,
            error=sample.error,
            now=now,
        )

    async def aclose(self) -> None:
        """Close the HTTP session and let the query threads go."""
        client = self._client
        if client is not None:
            await asyncio.to_thread(client.close)
        self._executor.shutdown(wait=False, cancel_futures=True)
