"""The runbook: the document as data, its check predicates, security evidence, and the engine.

* :mod:`console.runbook.model`: procedures, phases and steps (pydantic);
* :mod:`console.runbook.loader`: the shipped ``default_runbook.toml`` or the operator's file,
  validated with the config's error shape;
* :mod:`console.runbook.predicates`: structured checks over the live Snapshot;
* :mod:`console.runbook.security`: Trivy/Grype, CycloneDX/SPDX and security-score inputs;
* :mod:`console.runbook.engine`: the state machine that walks a procedure through its gates.

No Textual here: the screens render what the engine exposes.
"""
