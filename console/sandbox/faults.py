"""Fault injection for the sandbox estate: the fault kinds and the fault table.

A fault is set on a whole environment or on one service of it. The effective
faults of a service are its environment's faults overlaid with its own, so
``--slow 10`` on green and ``--error-rate 0.2`` on ``green/cache_optimizer``
both apply to that service. Clearing a service clears only its own faults;
clearing an environment clears the environment's and all its services'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

ENVIRONMENTS: tuple[str, ...] = ("blue", "green")

#: The nine ACGS orchestrators, in the order DESIGN.md lists them.
SERVICES: tuple[str, ...] = (
    "performance_suite",
    "cache_optimizer",
    "constitutional_compliance_framework",
    "test_orchestrator",
    "security_orchestrator",
    "deployment_orchestrator",
    "monitoring_orchestrator",
    "documentation_orchestrator",
    "unified_orchestrator",
)

#: Hash carried by a *wrong hash* fault when no value is given.
DEFAULT_WRONG_HASH = "0000deadbeef0000"


class FaultKind(StrEnum):
    """What a fault does to a service (or to every service of an environment)."""

    DOWN = "down"
    """Listener closed: connection refused; traffic dispatched to it gets 503."""
    SLOW = "slow"
    """Latency multiplied by ``value`` (default 10)."""
    ERROR_RATE = "error_rate"
    """Share ``value`` (0..1) of traffic answered 500; ``/health`` says degraded."""
    WRONG_HASH = "wrong_hash"
    """Body and header carry another hash (``value`` or a fixed wrong one)."""
    MISSING_HASH = "missing_hash"
    """No ``X-Constitutional-Hash`` header and no ``constitutional_hash`` field."""
    GARBAGE = "garbage"
    """``/health`` (and traffic) bodies are not JSON."""
    HANG = "hang"
    """Requests are read and never answered until the fault is cleared."""
    CACHE_MISS = "cache_miss"
    """Cache hit ratio forced to ``value`` (0..1, default 0.5)."""


class FaultError(ValueError):
    """A fault request names an unknown environment, service or kind, or a bad value."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault.

    Attributes:
        kind: What the fault does.
        value: The kind's parameter (factor, rate or hash); ``None`` when unused.
    """

    kind: FaultKind
    value: float | str | None = None


def _normalise_kind(raw: object) -> FaultKind:
    if not isinstance(raw, str):
        raise FaultError(f"kind must be a string, got {raw!r}")
    key = raw.strip().lower().replace("-", "_")
    aliases = {"5xx": "error_rate", "errors": "error_rate", "error": "error_rate"}
    key = aliases.get(key, key)
    try:
        return FaultKind(key)
    except ValueError as exc:
        valid = ", ".join(k.value for k in FaultKind)
        raise FaultError(f"unknown fault kind {raw!r}; valid kinds: {valid}") from exc


def _number(kind: FaultKind, raw: object, default: float) -> float:
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise FaultError(f"{kind.value} value must be a number, got {raw!r}")
    try:
        value = float(raw)
    except ValueError as exc:
        raise FaultError(f"{kind.value} value must be a number, got {raw!r}") from exc
    if not math.isfinite(value):
        raise FaultError(f"{kind.value} value must be finite, got {raw!r}")
    return value


def make_fault(kind_raw: object, value: object = None) -> Fault:
    """Build a validated fault from loosely typed input (JSON or CLI).

    Args:
        kind_raw: Kind name; ``-`` and ``_`` are interchangeable, ``5xx`` means error_rate.
        value: The kind's parameter, if any.

    Returns:
        The fault.

    Raises:
        FaultError: On an unknown kind or an out-of-range value.
    """
    kind = _normalise_kind(kind_raw)
    if kind is FaultKind.SLOW:
        factor = _number(kind, value, 10.0)
        if not 1.0 <= factor <= 10_000.0:
            raise FaultError(f"slow factor must be between 1 and 10000, got {factor:g}")
        return Fault(kind, factor)
    if kind in (FaultKind.ERROR_RATE, FaultKind.CACHE_MISS):
        rate = _number(kind, value, 1.0 if kind is FaultKind.ERROR_RATE else 0.5)
        if not 0.0 <= rate <= 1.0:
            raise FaultError(f"{kind.value} must be between 0 and 1, got {rate:g}")
        return Fault(kind, rate)
    if kind is FaultKind.WRONG_HASH:
        if value is None:
            return Fault(kind, DEFAULT_WRONG_HASH)
        if not isinstance(value, str) or not value.strip() or not value.isprintable():
            raise FaultError(f"wrong_hash value must be a printable string, got {value!r}")
        return Fault(kind, value.strip())
    if value is not None:
        raise FaultError(f"{kind.value} takes no value, got {value!r}")
    return Fault(kind)


def check_target(environment: object, service: object) -> tuple[str, str | None]:
    """Validate a fault target.

    Args:
        environment: ``blue`` or ``green``.
        service: One of the nine orchestrators, or ``None`` for the whole environment.

    Returns:
        The validated ``(environment, service)``.

    Raises:
        FaultError: On an unknown environment or service.
    """
    if environment not in ENVIRONMENTS:
        raise FaultError(f"unknown environment {environment!r}; valid: {', '.join(ENVIRONMENTS)}")
    if service is not None and service not in SERVICES:
        raise FaultError(f"unknown service {service!r}; valid: {', '.join(SERVICES)}")
    assert isinstance(environment, str)
    return environment, service if isinstance(service, str) else None


class FaultTable:
    """The faults currently injected, per environment and per service."""

    def __init__(self) -> None:
        """Start with no faults."""
        self._faults: dict[tuple[str, str | None], dict[FaultKind, Fault]] = {}

    def set(self, environment: str, service: str | None, fault: Fault) -> None:
        """Inject a fault (replacing one of the same kind on the same target).

        Args:
            environment: Validated environment.
            service: Validated service, or ``None`` for the environment.
            fault: The fault.
        """
        self._faults.setdefault((environment, service), {})[fault.kind] = fault

    def clear(self, environment: str | None = None, service: str | None = None) -> None:
        """Clear faults.

        Args:
            environment: Environment to clear; ``None`` clears everything.
            service: Service to clear; ``None`` clears the environment and its services.
        """
        if environment is None:
            self._faults.clear()
        elif service is not None:
            self._faults.pop((environment, service), None)
        else:
            for key in [k for k in self._faults if k[0] == environment]:
                del self._faults[key]

    def effective(self, environment: str, service: str) -> dict[FaultKind, Fault]:
        """Faults that apply to one service: its environment's, overlaid with its own.

        Args:
            environment: Environment name.
            service: Service name.

        Returns:
            Kind -> fault.
        """
        merged = dict(self._faults.get((environment, None), {}))
        merged.update(self._faults.get((environment, service), {}))
        return merged

    def environment_faults(self, environment: str) -> dict[FaultKind, Fault]:
        """Faults set on the environment as a whole.

        Args:
            environment: Environment name.

        Returns:
            Kind -> fault.
        """
        return dict(self._faults.get((environment, None), {}))

    def as_json(self) -> list[dict[str, Any]]:
        """The table as a JSON-ready list, one entry per fault.

        Returns:
            Entries with environment, service, kind and value.
        """
        return [
            {"environment": env, "service": svc, "kind": fault.kind.value, "value": fault.value}
            for (env, svc), faults in sorted(
                self._faults.items(), key=lambda item: (item[0][0], item[0][1] or "")
            )
            for fault in faults.values()
        ]
