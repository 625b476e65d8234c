"""The alert rules' external inputs, gathered from what the config points at.

Four runbook alerts do not come from the monitor's own probes: Audit Trail
Corruption (the hash chain), Security Score, Vulnerability Detected and
Constitutional Security Breach. :class:`ConfiguredRuleInputs` is the
``inputs`` provider the monitor calls once per sweep; it reads the security
tools' files (re-read only when they change) and verifies the audit chain in
a thread at most every ``audit_every_s`` seconds, so a sweep never waits on
the audit store. What is not configured stays ``None``: its rule is then
unknown, never passing.
"""

from __future__ import annotations

import asyncio
import logging
import time

from backends.models import utcnow
from console.config import AppConfig
from console.rules import AuditVerification, RuleInputs, SecurityValidation, VulnerabilityReport

log = logging.getLogger(__name__)


class ConfiguredRuleInputs:
    """Rule inputs from the configured security files and the audit trail."""

    def __init__(self, config: AppConfig, *, audit_every_s: float = 30.0) -> None:
        """Create the provider.

        Args:
            config: The console configuration (``security`` and ``audit`` sections).
            audit_every_s: How often to re-verify the audit chain.
        """
        self._config = config
        self._audit_every_s = audit_every_s
        self._audit: AuditVerification | None = None
        self._audit_checked = -float("inf")
        self._audit_task: asyncio.Task[None] | None = None
        # Imported here, where the source is built, and not inside the first sweep: an import
        # there holds the sweep's loop while its probes are being timed.
        import console.audit
        import console.runbook.security  # noqa: F401

    async def __call__(self) -> RuleInputs:
        """The inputs for this sweep (never raises; failures become unknown)."""
        self._maybe_verify_audit()
        security = self._security()
        return RuleInputs(audit=self._audit, **security)

    # -- security -------------------------------------------------------------

    def _security(self) -> dict[str, object]:
        from console.runbook.security import (
            SecurityInputError,
            SecurityVerdict,
            judge_sbom,
            judge_score,
            judge_vulnerabilities,
            load_sbom,
            load_security_score,
            load_vulnerability_report,
            rule_inputs,
        )

        sec = self._config.security
        raw = rule_inputs(sec.vulnerability_report, sec.security_score_file)
        out: dict[str, object] = {"security_score": raw.get("security_score")}
        vulns = raw.get("vulnerabilities")
        out["vulnerabilities"] = VulnerabilityReport(**vulns) if isinstance(vulns, dict) else None
        # The constitutional security validation passes only when every configured
        # input is present and passes; any missing input leaves it unknown.
        if sec.vulnerability_report and sec.sbom and sec.security_score_file:
            try:
                verdicts = [
                    judge_vulnerabilities(load_vulnerability_report(sec.vulnerability_report)),
                    judge_sbom(load_sbom(sec.sbom)),
                    judge_score(
                        load_security_score(sec.security_score_file),
                        ">=",
                        self._config.thresholds.security_score_critical,
                    ),
                ]
            except SecurityInputError as exc:
                out["security_validation"] = SecurityValidation(
                    passed=False, detail=str(exc), checked_at=utcnow()
                )
            else:
                failed = [v for v in verdicts if v.verdict is not SecurityVerdict.PASS]
                out["security_validation"] = SecurityValidation(
                    passed=not failed,
                    detail="; ".join(f"{v.measured} (want {v.target})" for v in failed)
                    or "all security inputs pass",
                    checked_at=utcnow(),
                )
        return out

    # -- audit ----------------------------------------------------------------

    def _maybe_verify_audit(self) -> None:
        now = time.monotonic()
        if self._audit_task is not None and not self._audit_task.done():
            return
        if now - self._audit_checked < self._audit_every_s:
            return
        self._audit_checked = now
        self._audit_task = asyncio.get_running_loop().create_task(self._verify_audit())

    async def _verify_audit(self) -> None:
        from console.audit import VerifyState, open_store, verify_store

        def verify() -> AuditVerification:
            store = open_store(self._config.audit)
            try:
                result = verify_store(
                    store, expected_constitutional_hash=self._config.constitutional_hash
                )
            finally:
                store.close()
            ok = None if result.state is VerifyState.UNREADABLE else result.ok
            return AuditVerification(ok=ok, detail=result.summary(), checked_at=utcnow())

        try:
            self._audit = await asyncio.to_thread(verify)
        except Exception as exc:  # an audit store we cannot read is unknown, not a crash
            log.warning("audit verification failed: %s: %s", type(exc).__name__, exc)
            self._audit = AuditVerification(ok=None, detail=str(exc), checked_at=utcnow())

    async def prime(self) -> None:
        """Verify the audit chain now (a one-shot command wants it before its sweep)."""
        self._audit_checked = time.monotonic()
        await self._verify_audit()

    async def aclose(self) -> None:
        """Wait for a verification still running."""
        if self._audit_task is not None:
            await asyncio.gather(self._audit_task, return_exceptions=True)
