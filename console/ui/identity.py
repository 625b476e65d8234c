"""Who is at the keyboard: re-exported from :mod:`console.identity`.

The operator identity is core, not UI: the lease, the four-eyes gates and the audit trail
need it without Textual. This module only keeps older imports working.
"""

from __future__ import annotations

from console.identity import operator_identity, ssh_client

__all__ = ["operator_identity", "ssh_client"]
