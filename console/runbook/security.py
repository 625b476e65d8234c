"""Security validation: read what the site's security tools produced, and judge it.

Owns the pre-deployment "Security Validation" evidence of the runbook:

* a vulnerability report, Trivy JSON (``Results[].Vulnerabilities[].Severity``) or
  Grype JSON (``matches[].vulnerability.severity``): critical and high findings are
  counted against the runbook's target of 0;
* an SBOM, CycloneDX JSON (``bomFormat``/``specVersion``/``components``) or SPDX JSON
  (``spdxVersion``/``packages``): it must parse and list at least one component;
* a security score out of 100, from a file (JSON or plain text) or a metric: the
  runbook's target is 98, and below 90 is its critical alert.

Every reader raises :class:`SecurityInputError` naming the file, what is wrong and
how to fix it; nothing here turns an unreadable or missing input into a pass.
Files are re-read only when their size or modification time changes, so gates can
judge them on every sweep.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backends.models import MetricValue

SEVERITIES: tuple[str, ...] = ("critical", "high", "medium", "low", "negligible", "unknown")
"""Severities as both tools report them, lower-cased, worst first."""


class SecurityInputError(Exception):
    """A security input that cannot be used: names the file, the problem and the fix."""

    def __init__(self, path: Path | str, message: str, fix: str) -> None:
        super().__init__(f"{path}: {message}. Fix: {fix}")
        self.path = str(path)
        self.message = message
        self.fix = fix


class _Tool(BaseModel):
    """Base for the tools' own JSON: keep what we read, ignore the rest."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class _Result(BaseModel):
    """Base for our summaries: frozen, strict."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- vulnerability reports ----------------------------------------------------


class TrivyVulnerability(_Tool):
    """One entry of ``Results[].Vulnerabilities`` in a Trivy JSON report."""

    VulnerabilityID: str
    PkgName: str = ""
    InstalledVersion: str = ""
    Severity: str


class TrivyResult(_Tool):
    """One scanned target of a Trivy report."""

    Target: str = ""
    Vulnerabilities: list[TrivyVulnerability] | None = None


class TrivyReport(_Tool):
    """A Trivy JSON report (``trivy image --format json``)."""

    SchemaVersion: int | None = None
    ArtifactName: str = ""
    Results: list[TrivyResult] | None = None


class GrypeVulnerability(_Tool):
    """``matches[].vulnerability`` in a Grype JSON report."""

    id: str
    severity: str


class GrypeArtifact(_Tool):
    """``matches[].artifact`` in a Grype JSON report."""

    name: str = ""
    version: str = ""


class GrypeMatch(_Tool):
    """One match of a Grype report."""

    vulnerability: GrypeVulnerability
    artifact: GrypeArtifact = GrypeArtifact()


class GrypeReport(_Tool):
    """A Grype JSON report (``grype IMAGE -o json``)."""

    matches: list[GrypeMatch]


class Finding(_Result):
    """One vulnerability finding, whichever tool reported it."""

    id: str
    severity: str
    """Lower-cased: critical, high, medium, low, negligible or unknown."""
    package: str = ""
    version: str = ""
    target: str = ""


class VulnerabilitySummary(_Result):
    """What a vulnerability report says, counted by severity."""

    tool: Literal["trivy", "grype"]
    path: str
    counts: dict[str, int]
    """Findings per lower-cased severity (every severity present, zeros included)."""
    findings: tuple[Finding, ...] = ()
    """The critical and high findings (what fails the gate)."""

    @property
    def critical(self) -> int:
        """Number of critical findings."""
        return self.counts.get("critical", 0)

    @property
    def high(self) -> int:
        """Number of high findings."""
        return self.counts.get("high", 0)

    @property
    def total(self) -> int:
        """Number of findings of any severity."""
        return sum(self.counts.values())


def _normalise_severity(raw: str) -> str:
    s = raw.strip().lower()
    return s if s in SEVERITIES else "unknown"


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecurityInputError(
            path, f"no such {what} file", "check the path in the [security] section of the config"
        ) from None
    except IsADirectoryError:
        raise SecurityInputError(
            path, "is a directory", f"point it at the {what} JSON file"
        ) from None
    except OSError as exc:
        raise SecurityInputError(
            path, f"cannot read it ({exc.strerror or exc})", "check its permissions"
        ) from None
    except UnicodeDecodeError:
        raise SecurityInputError(
            path, "is not UTF-8 text", f"give the tool's JSON output ({what})"
        ) from None
    if not text.strip():
        raise SecurityInputError(path, "is empty", f"run the tool again and save its JSON ({what})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SecurityInputError(
            path,
            f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            f"save the tool's JSON output ({what}) unmodified",
        ) from None


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], data: Any, path: Path, what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise SecurityInputError(
            path,
            f"is not a valid {what}: {where}: {first['msg']}"
            + (f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""),
            f"save the tool's JSON output ({what}) unmodified",
        ) from None


def parse_vulnerability_report(data: Any, path: Path | str = "(report)") -> VulnerabilitySummary:
    """Count the findings of a Trivy or Grype JSON report by severity.

    Args:
        data: The decoded JSON.
        path: Where it came from, for messages.

    Returns:
        The summary; its ``findings`` holds the critical and high ones.

    Raises:
        SecurityInputError: when it is neither a Trivy nor a Grype report.
    """
    p = Path(path)
    findings: list[Finding] = []
    tool: Literal["trivy", "grype"]
    if isinstance(data, dict) and ("Results" in data or "SchemaVersion" in data):
        tool = "trivy"
        trivy = _validate(TrivyReport, data, p, "Trivy JSON report")
        for result in trivy.Results or []:
            for v in result.Vulnerabilities or []:
                findings.append(
                    Finding(
                        id=v.VulnerabilityID,
                        severity=_normalise_severity(v.Severity),
                        package=v.PkgName,
                        version=v.InstalledVersion,
                        target=result.Target,
                    )
                )
    elif isinstance(data, dict) and "matches" in data:
        tool = "grype"
        grype = _validate(GrypeReport, data, p, "Grype JSON report")
        for m in grype.matches:
            findings.append(
                Finding(
                    id=m.vulnerability.id,
                    severity=_normalise_severity(m.vulnerability.severity),
                    package=m.artifact.name,
                    version=m.artifact.version,
                )
            )
    else:
        raise SecurityInputError(
            p,
            "is neither a Trivy report (no 'Results'/'SchemaVersion') "
            "nor a Grype report (no 'matches')",
            "use `trivy image --format json` or `grype IMAGE -o json` output",
        )
    counts = Counter(f.severity for f in findings)
    return VulnerabilitySummary(
        tool=tool,
        path=str(p),
        counts={s: counts.get(s, 0) for s in SEVERITIES},
        findings=tuple(f for f in findings if f.severity in ("critical", "high")),
    )


# --- SBOMs --------------------------------------------------------------------


class CycloneDXComponent(_Tool):
    """One ``components[]`` entry of a CycloneDX BOM."""

    type: str
    name: str
    version: str = ""
    purl: str | None = None


class CycloneDXBom(_Tool):
    """A CycloneDX JSON BOM."""

    bomFormat: Literal["CycloneDX"]
    specVersion: str = Field(pattern=r"^1\.[0-9]+$")
    components: list[CycloneDXComponent] = []


class SPDXPackage(_Tool):
    """One ``packages[]`` entry of an SPDX document."""

    SPDXID: str
    name: str
    versionInfo: str = ""
    externalRefs: list[dict[str, Any]] = []


class SPDXDocument(_Tool):
    """An SPDX 2.x JSON document."""

    spdxVersion: str = Field(pattern=r"^SPDX-2\.[0-9]+$")
    SPDXID: str
    name: str
    packages: list[SPDXPackage] = []


class SbomComponent(_Result):
    """One component an SBOM lists."""

    name: str
    version: str = ""
    purl: str | None = None


class SbomSummary(_Result):
    """What an SBOM lists."""

    format: Literal["cyclonedx", "spdx"]
    spec_version: str
    path: str
    components: tuple[SbomComponent, ...]

    @property
    def count(self) -> int:
        """Number of components."""
        return len(self.components)


def _purl_of(refs: list[dict[str, Any]]) -> str | None:
    for ref in refs:
        if ref.get("referenceType") == "purl" and isinstance(ref.get("referenceLocator"), str):
            return str(ref["referenceLocator"])
    return None


def parse_sbom(data: Any, path: Path | str = "(sbom)") -> SbomSummary:
    """Parse a CycloneDX or SPDX JSON SBOM and list its components.

    Args:
        data: The decoded JSON.
        path: Where it came from, for messages.

    Returns:
        The summary (possibly with no components: :func:`judge_sbom` fails that).

    Raises:
        SecurityInputError: when it is neither format, or is malformed.
    """
    p = Path(path)
    if isinstance(data, dict) and "bomFormat" in data:
        bom = _validate(CycloneDXBom, data, p, "CycloneDX JSON SBOM")
        return SbomSummary(
            format="cyclonedx",
            spec_version=bom.specVersion,
            path=str(p),
            components=tuple(
                SbomComponent(name=c.name, version=c.version, purl=c.purl) for c in bom.components
            ),
        )
    if isinstance(data, dict) and "spdxVersion" in data:
        doc = _validate(SPDXDocument, data, p, "SPDX JSON document")
        return SbomSummary(
            format="spdx",
            spec_version=doc.spdxVersion,
            path=str(p),
            components=tuple(
                SbomComponent(
                    name=pkg.name, version=pkg.versionInfo, purl=_purl_of(pkg.externalRefs)
                )
                for pkg in doc.packages
            ),
        )
    raise SecurityInputError(
        p,
        "is neither a CycloneDX SBOM (no 'bomFormat') nor an SPDX document (no 'spdxVersion')",
        "generate it with e.g. `syft IMAGE -o cyclonedx-json` or `syft IMAGE -o spdx-json`",
    )


# --- security score -----------------------------------------------------------

_SCORE_KEYS = ("score", "security_score", "overall_score")
_PLAIN_SCORE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(?:/\s*([0-9]+(?:\.[0-9]+)?))?\s*$")


class SecurityScore(_Result):
    """A security score out of 100, with where it came from."""

    score: float = Field(ge=0, le=100)
    source: str


def parse_security_score(text: str, path: Path | str = "(score)") -> SecurityScore:
    """Read a security score from a file's text.

    Accepted: a plain number (``97.5``), ``97.5/100``, a JSON number, or a JSON object
    with ``score``, ``security_score`` or ``overall_score`` (optionally with ``max``
    or ``max_score`` when the scale is not 100).

    Raises:
        SecurityInputError: when no score can be read, or it is outside 0..100.
    """
    p = Path(path)
    fix = 'write a number out of 100 ("97.5"), or JSON like {"score": 97.5}'
    raw: float | None = None
    scale = 100.0
    plain = _PLAIN_SCORE.match(text)
    if plain:
        raw = float(plain.group(1))
        if plain.group(2) is not None:
            scale = float(plain.group(2))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise SecurityInputError(p, "holds neither a number nor JSON", fix) from None
        if isinstance(data, dict):
            key = next((k for k in _SCORE_KEYS if k in data), None)
            if key is None:
                raise SecurityInputError(
                    p, f"JSON has none of the keys {', '.join(_SCORE_KEYS)}", fix
                )
            value, max_value = data[key], data.get("max_score", data.get("max", 100))
        else:
            value, max_value = data, 100
        numbers: list[float] = []
        for v in (value, max_value):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SecurityInputError(p, f"score {v!r} is not a number", fix)
            numbers.append(float(v))
        raw, scale = numbers
    if not math.isfinite(raw) or not math.isfinite(scale) or scale <= 0:
        raise SecurityInputError(p, f"score {raw}/{scale} is not usable", fix)
    score = 100.0 * raw / scale
    if not 0.0 <= score <= 100.0:
        raise SecurityInputError(p, f"score {raw}/{scale:g} is outside 0..100", fix)
    return SecurityScore(score=score, source=str(p))


def score_from_metric(metric: MetricValue) -> SecurityScore:
    """A security score from a measured metric (0..100).

    Raises:
        SecurityInputError: when the metric has no known, fresh value, or it is out of range.
    """
    if not metric.known or metric.value is None:
        why = metric.error or ("stale" if metric.stale else "no value")
        raise SecurityInputError(
            metric.source or metric.name,
            f"security score metric {metric.name!r} is unknown ({why})",
            "check that the metric is being scraped",
        )
    if not 0.0 <= metric.value <= 100.0:
        raise SecurityInputError(
            metric.source or metric.name,
            f"security score metric {metric.name!r} = {metric.value} is outside 0..100",
            "check the metric's scale",
        )
    return SecurityScore(score=metric.value, source=metric.source or metric.name)


# --- files, cached ------------------------------------------------------------

_cache: dict[tuple[str, str], tuple[tuple[int, int], Any]] = {}


def _cached(kind: str, path: Path, load: Any) -> Any:
    """Re-read ``path`` only when its size or mtime changed (errors are not cached)."""
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    key = (kind, str(path))
    hit = _cache.get(key)
    if stamp is not None and hit is not None and hit[0] == stamp:
        return hit[1]
    value = load(path)
    if stamp is not None:
        _cache[key] = (stamp, value)
    return value


def load_vulnerability_report(path: Path) -> VulnerabilitySummary:
    """Read and count a Trivy or Grype JSON report.

    Raises:
        SecurityInputError: missing, unreadable or malformed file.
    """

    def load(p: Path) -> VulnerabilitySummary:
        return parse_vulnerability_report(_read_json(p, "vulnerability report"), p)

    result: VulnerabilitySummary = _cached("vuln", path, load)
    return result


def load_sbom(path: Path) -> SbomSummary:
    """Read a CycloneDX or SPDX JSON SBOM.

    Raises:
        SecurityInputError: missing, unreadable or malformed file.
    """

    def load(p: Path) -> SbomSummary:
        return parse_sbom(_read_json(p, "SBOM"), p)

    result: SbomSummary = _cached("sbom", path, load)
    return result


def load_security_score(path: Path) -> SecurityScore:
    """Read a security score file (JSON or plain text).

    Raises:
        SecurityInputError: missing, unreadable or malformed file.
    """

    def load(p: Path) -> SecurityScore:
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SecurityInputError(
                p, "no such security score file", "check security.security_score_file in the config"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SecurityInputError(p, f"cannot read it ({exc})", "check the file") from None
        return parse_security_score(text, p)

    result: SecurityScore = _cached("score", path, load)
    return result


# --- judging against the runbook's targets ------------------------------------


class SecurityVerdict(StrEnum):
    """Outcome of judging one security input."""

    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"


class SecurityJudgement(_Result):
    """One security input judged against its target."""

    verdict: SecurityVerdict
    measured: str
    """What was found, e.g. ``2 critical, 5 high`` or ``97.0/100``."""
    target: str
    """What the runbook wants, e.g. ``0 critical/high`` or ``>= 98/100``."""
    detail: str = ""


def judge_vulnerabilities(
    summary: VulnerabilitySummary, max_critical: int = 0, max_high: int = 0
) -> SecurityJudgement:
    """The runbook's "Vulnerability scan passed (0 critical/high findings)"."""
    ok = summary.critical <= max_critical and summary.high <= max_high
    worst = ", ".join(
        f"{f.id} ({f.severity}, {f.package} {f.version})".strip() for f in summary.findings[:5]
    )
    return SecurityJudgement(
        verdict=SecurityVerdict.PASS if ok else SecurityVerdict.FAIL,
        measured=(
            f"{summary.critical} critical, {summary.high} high "
            f"({summary.tool}, {summary.total} total)"
        ),
        target=f"<= {max_critical} critical, <= {max_high} high",
        detail=worst,
    )


def judge_sbom(summary: SbomSummary) -> SecurityJudgement:
    """The runbook's "SBOM generated and validated": parses and lists components."""
    return SecurityJudgement(
        verdict=SecurityVerdict.PASS if summary.count > 0 else SecurityVerdict.FAIL,
        measured=f"{summary.format} {summary.spec_version}, {summary.count} component(s)",
        target=">= 1 component",
        detail="" if summary.count else "the SBOM lists no components",
    )


def judge_score(score: SecurityScore, op: str, threshold: float) -> SecurityJudgement:
    """A security score against a bound (``>=`` 98 target, ``>=`` 90 critical floor, ...)."""
    ops = {
        ">=": score.score >= threshold,
        ">": score.score > threshold,
        "<=": score.score <= threshold,
        "<": score.score < threshold,
        "==": score.score == threshold,
        "!=": score.score != threshold,
    }
    if op not in ops:
        raise ValueError(f"unknown comparison {op!r}")
    return SecurityJudgement(
        verdict=SecurityVerdict.PASS if ops[op] else SecurityVerdict.FAIL,
        measured=f"{score.score:g}/100",
        target=f"{op} {threshold:g}/100",
        detail=f"from {score.source}",
    )


# --- feeding the alert rules --------------------------------------------------


def rule_inputs(
    vulnerability_report: Path | None, security_score_file: Path | None
) -> dict[str, Any]:
    """The security inputs of the alert rules, read from the configured files.

    For ``console.rules.RuleInputs(**rule_inputs(...), audit=...)``: ``security_score``
    is a :class:`MetricValue` (without a value, and with the reason, when the file is
    missing or malformed) and ``vulnerabilities`` the critical/high counts (None when
    there is no usable report: the rule is then unknown, never passing).
    """
    out: dict[str, Any] = {"security_score": None, "vulnerabilities": None}
    if security_score_file is not None:
        try:
            score = load_security_score(security_score_file)
            out["security_score"] = MetricValue(
                name="security_score", value=score.score, unit="/100", source=score.source
            )
        except SecurityInputError as exc:
            out["security_score"] = MetricValue(
                name="security_score", source=str(security_score_file), error=str(exc)
            )
    if vulnerability_report is not None:
        try:
            summary = load_vulnerability_report(vulnerability_report)
        except SecurityInputError:
            return out
        out["vulnerabilities"] = {
            "critical": summary.critical,
            "high": summary.high,
            "source": f"{summary.tool} {summary.path}",
        }
    return out
