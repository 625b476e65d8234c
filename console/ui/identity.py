"""Who is at the keyboard: moved to :mod:`console.coordination` (re-exported here).

The operator identity is core, not UI: the lease, the four-eyes gates and the audit trail
need it without Textual. Import it from :mod:`console.coordination`; this module only keeps
older imports working.
"""

from __future__ import annotations

from console.coordination import operator_identity, ssh_client

__all__ = ["operator_identity", "ssh_client"]
