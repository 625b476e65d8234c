"""Who is at the keyboard: ``user@host``, with the SSH client when there is one.

Core, not UI: the lease, the four-eyes gates, the audit trail and the rollback command all
name the operator the same way. Standard library only, so the first frame pays nothing for it.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping

__all__ = ["operator_identity", "operator_principal", "ssh_client"]


def ssh_client(environ: Mapping[str, str]) -> str | None:
    """The SSH client address from ``SSH_CONNECTION`` / ``SSH_CLIENT``, if any."""
    for name in ("SSH_CONNECTION", "SSH_CLIENT"):
        value = environ.get(name, "").split()
        if value:
            return value[0]
    return None


def operator_identity(
    override: str | None = None,
    environ: Mapping[str, str] | None = None,
    hostname: str | None = None,
) -> str:
    """``alice@bastion``, or ``alice@bastion (ssh 10.0.0.5)`` in an SSH session.

    Args:
        override: ``config.operator``; used verbatim when set.
        environ: The environment (default: ``os.environ``).
        hostname: The host name (default: :func:`socket.gethostname`).
    """
    if override and override.strip():
        return override.strip()
    env = os.environ if environ is None else environ
    user = env.get("USER") or env.get("LOGNAME")
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = f"uid{os.getuid()}"
    host = hostname or socket.gethostname() or "unknown-host"
    identity = f"{user}@{host}"
    client = ssh_client(env)
    return f"{identity} (ssh {client})" if client else identity


def operator_principal(identity: str) -> str:
    """Who counts as "the same operator" for four-eyes: the user name, case-folded.

    ``Alice@bastion (ssh 10.0.0.5)``, ``alice@laptop`` and ``alice`` are all ``alice``: the
    same person on another host or SSH session must not approve their own gate.
    """
    base = identity.split(" (ssh ", 1)[0].strip()
    user = base.split("@", 1)[0].strip()
    return (user or base).casefold()
