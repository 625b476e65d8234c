"""Security validation reads the tools' real output formats and judges it against the runbook."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backends.models import MetricValue
from console.config import Thresholds
from console.runbook import security as sec
from console.runbook.predicates import (
    EvaluationContext,
    SecurityCheck,
    SecurityInputs,
    Verdict,
)

DATA = Path(__file__).parent / "data"
NOW = datetime(2025, 1, 7, 12, 0, tzinfo=UTC)


# --- vulnerability reports ----------------------------------------------------


def test_trivy_report_without_critical_or_high_passes() -> None:
    summary = sec.load_vulnerability_report(DATA / "trivy-clean.json")
    assert summary.tool == "trivy"
    assert (summary.critical, summary.high, summary.counts["medium"], summary.counts["low"]) == (
        0,
        0,
        1,
        1,
    )
    assert summary.findings == ()
    assert sec.judge_vulnerabilities(summary).verdict is sec.SecurityVerdict.PASS


def test_trivy_report_counts_critical_and_high_across_targets() -> None:
    summary = sec.load_vulnerability_report(DATA / "trivy-critical.json")
    assert (summary.critical, summary.high, summary.total) == (1, 2, 5)
    assert summary.counts["unknown"] == 1
    ids = {(f.id, f.severity, f.package) for f in summary.findings}
    assert ids == {
        ("CVE-2024-45337", "critical", "openssl"),
        ("CVE-2024-35195", "high", "requests"),
        ("GHSA-9wx4-h78v-vm56", "high", "urllib3"),
    }
    judged = sec.judge_vulnerabilities(summary)
    assert judged.verdict is sec.SecurityVerdict.FAIL
    assert judged.measured.startswith("1 critical, 2 high")
    assert "CVE-2024-45337" in judged.detail
    # A site may tolerate some: the bounds are the step's, not hard-wired.
    assert sec.judge_vulnerabilities(summary, 1, 2).verdict is sec.SecurityVerdict.PASS


def test_grype_reports() -> None:
    clean = sec.load_vulnerability_report(DATA / "grype-clean.json")
    assert clean.tool == "grype"
    assert (clean.critical, clean.high, clean.counts["negligible"], clean.counts["low"]) == (
        0,
        0,
        1,
        1,
    )
    assert sec.judge_vulnerabilities(clean).verdict is sec.SecurityVerdict.PASS
    bad = sec.load_vulnerability_report(DATA / "grype-critical.json")
    assert (bad.critical, bad.high, bad.counts["medium"]) == (1, 1, 1)
    assert {f.package for f in bad.findings} == {"requests", "setuptools"}
    assert sec.judge_vulnerabilities(bad).verdict is sec.SecurityVerdict.FAIL


def test_trivy_report_with_no_results_at_all_is_clean() -> None:
    summary = sec.parse_vulnerability_report({"SchemaVersion": 2, "ArtifactName": "x"})
    assert summary.total == 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("trivy-truncated.json", "is not valid JSON (line 6"),
        ("trivy-no-severity.json", "Results.0.Vulnerabilities.0.Severity: Field required"),
        ("cyclonedx.json", "is neither a Trivy report"),
        ("does-not-exist.json", "no such vulnerability report file"),
    ],
)
def test_malformed_vulnerability_reports_name_file_problem_and_fix(
    name: str, expected: str
) -> None:
    with pytest.raises(sec.SecurityInputError) as err:
        sec.load_vulnerability_report(DATA / name)
    assert expected in str(err.value)
    assert name in str(err.value)
    assert err.value.fix


def test_empty_and_binary_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("  \n")
    with pytest.raises(sec.SecurityInputError, match="is empty"):
        sec.load_vulnerability_report(empty)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(sec.SecurityInputError, match="not UTF-8"):
        sec.load_sbom(binary)
    with pytest.raises(sec.SecurityInputError, match="is a directory"):
        sec.load_sbom(tmp_path)


# --- SBOMs ----------------------------------------------------------------------


def test_cyclonedx_sbom_lists_components() -> None:
    sbom = sec.load_sbom(DATA / "cyclonedx.json")
    assert (sbom.format, sbom.spec_version, sbom.count) == ("cyclonedx", "1.5", 4)
    assert [c.name for c in sbom.components] == ["fastapi", "pydantic", "redis", "debian"]
    assert sbom.components[0].purl == "pkg:pypi/fastapi@0.115.6"
    assert sec.judge_sbom(sbom).verdict is sec.SecurityVerdict.PASS


def test_spdx_sbom_lists_packages_with_purls() -> None:
    sbom = sec.load_sbom(DATA / "spdx.json")
    assert (sbom.format, sbom.spec_version) == ("spdx", "SPDX-2.3")
    assert [(c.name, c.version, c.purl) for c in sbom.components] == [
        ("fastapi", "0.115.6", "pkg:pypi/fastapi@0.115.6"),
        ("uvicorn", "0.34.0", None),
    ]
    assert sec.judge_sbom(sbom).verdict is sec.SecurityVerdict.PASS


def test_sbom_without_components_fails() -> None:
    sbom = sec.load_sbom(DATA / "cyclonedx-empty.json")
    judged = sec.judge_sbom(sbom)
    assert judged.verdict is sec.SecurityVerdict.FAIL
    assert "no components" in judged.detail


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cyclonedx-bad-version.json", "specVersion: String should match pattern"),
        ("trivy-clean.json", "is neither a CycloneDX SBOM"),
        ("trivy-truncated.json", "is not valid JSON"),
    ],
)
def test_malformed_sboms(name: str, expected: str) -> None:
    with pytest.raises(sec.SecurityInputError) as err:
        sec.load_sbom(DATA / name)
    assert expected in str(err.value)


def test_spdx_package_without_name_is_malformed() -> None:
    data = json.loads((DATA / "spdx.json").read_text())
    del data["packages"][1]["name"]
    with pytest.raises(sec.SecurityInputError, match=r"packages\.1\.name: Field required"):
        sec.parse_sbom(data, "spdx.json")


# --- security score ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("97.5", 97.5),
        ("97.5/100\n", 97.5),
        ("9/10", 90.0),
        ("98", 98.0),
        ('{"score": 98.5}', 98.5),
        ('{"security_score": 91}', 91.0),
        ('{"overall_score": 4.5, "max": 5}', 90.0),
        ("96", 96.0),
    ],
)
def test_security_score_formats(text: str, score: float) -> None:
    assert sec.parse_security_score(text, "score.txt").score == pytest.approx(score)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "holds neither a number nor JSON"),
        ("ninety-eight", "holds neither a number nor JSON"),
        ("150", "outside 0..100"),
        ('{"score": "high"}', "is not a number"),
        ('{"score": true}', "is not a number"),
        ('{"grade": "A"}', "none of the keys"),
        ('{"score": 5, "max": 0}', "not usable"),
    ],
)
def test_bad_security_scores(text: str, expected: str) -> None:
    with pytest.raises(sec.SecurityInputError) as err:
        sec.parse_security_score(text, "score.txt")
    assert expected in str(err.value)
    assert "score.txt" in str(err.value)


def test_security_score_against_target_and_floor() -> None:
    score = sec.load_security_score(DATA / "security-score.json")
    assert score.score == 98.5
    t = Thresholds()
    assert sec.judge_score(score, ">=", t.security_score_target).verdict is sec.SecurityVerdict.PASS
    low = sec.SecurityScore(score=93.0, source="x")
    assert sec.judge_score(low, ">=", t.security_score_target).verdict is sec.SecurityVerdict.FAIL
    assert sec.judge_score(low, ">=", t.security_score_critical).verdict is sec.SecurityVerdict.PASS


def test_security_score_from_metric() -> None:
    ok = MetricValue(name="acgs_security_score", value=99.0, source="prometheus")
    assert sec.score_from_metric(ok).score == 99.0
    for bad in (
        MetricValue(name="acgs_security_score", value=None, error="empty result"),
        MetricValue(name="acgs_security_score", value=99.0, stale=True),
        MetricValue(name="acgs_security_score", value=float("nan")),
        MetricValue(name="acgs_security_score", value=250.0),
    ):
        with pytest.raises(sec.SecurityInputError):
            sec.score_from_metric(bad)


def test_changed_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "score.txt"
    path.write_text("99")
    assert sec.load_security_score(path).score == 99
    path.write_text("91.5")
    os.utime(path, ns=(1, 2))  # a different mtime even on coarse clocks
    assert sec.load_security_score(path).score == 91.5


# --- the security predicate (what the runbook's steps use) -------------------------


def _ctx(**inputs: object) -> EvaluationContext:
    return EvaluationContext(
        snapshot=None,
        now=NOW,
        thresholds=Thresholds(),
        expected_hash="cdd01ef066bc6cf2",
        security=SecurityInputs(**inputs),  # type: ignore[arg-type]
    )


def test_security_predicate_verdicts() -> None:
    vulns = SecurityCheck(security="vulnerabilities")
    (o,) = vulns.evaluate(_ctx())
    assert o.verdict is Verdict.UNKNOWN and "security.vulnerability_report" in o.detail
    (o,) = vulns.evaluate(_ctx(vulnerability_report=DATA / "trivy-clean.json"))
    assert o.verdict is Verdict.PASS
    (o,) = vulns.evaluate(_ctx(vulnerability_report=DATA / "grype-critical.json"))
    assert o.verdict is Verdict.FAIL and o.measured.startswith("1 critical, 1 high")
    (o,) = vulns.evaluate(_ctx(vulnerability_report=DATA / "trivy-truncated.json"))
    assert o.verdict is Verdict.UNKNOWN and "not valid JSON" in o.detail

    sbom = SecurityCheck(security="sbom")
    assert sbom.evaluate(_ctx())[0].verdict is Verdict.UNKNOWN
    assert sbom.evaluate(_ctx(sbom=DATA / "spdx.json"))[0].verdict is Verdict.PASS
    assert sbom.evaluate(_ctx(sbom=DATA / "cyclonedx-empty.json"))[0].verdict is Verdict.FAIL

    target = SecurityCheck(security="score", threshold="security_score_target")
    floor = SecurityCheck(security="score", threshold="security_score_critical")
    assert target.evaluate(_ctx())[0].verdict is Verdict.UNKNOWN
    metric = MetricValue(name="acgs_security_score", value=93.0)
    assert target.evaluate(_ctx(security_score_metric=metric))[0].verdict is Verdict.FAIL
    assert floor.evaluate(_ctx(security_score_metric=metric))[0].verdict is Verdict.PASS
    (o,) = target.evaluate(_ctx(security_score_file=DATA / "security-score.json"))
    assert (o.verdict, o.value, o.threshold) == (Verdict.PASS, 98.5, ">= 98/100")


def test_rule_inputs_feed_the_alert_rules(tmp_path: Path) -> None:
    from console.rules import RuleInputs

    good = RuleInputs(**sec.rule_inputs(DATA / "trivy-critical.json", DATA / "security-score.json"))
    assert good.vulnerabilities is not None
    assert (good.vulnerabilities.critical, good.vulnerabilities.high) == (1, 2)
    assert good.security_score is not None and good.security_score.value == 98.5
    bad = tmp_path / "score.txt"
    bad.write_text("excellent")
    broken = RuleInputs(**sec.rule_inputs(DATA / "trivy-truncated.json", bad))
    assert broken.vulnerabilities is None
    assert broken.security_score is not None and not broken.security_score.known
    assert "holds neither a number nor JSON" in (broken.security_score.error or "")
    assert sec.rule_inputs(None, None) == {"security_score": None, "vulnerabilities": None}
