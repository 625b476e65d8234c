"""The sandbox estate: a local ACGS deployment for the console to run against.

Blue and green fleets of the nine orchestrators (real HTTP servers on loopback),
a traffic generator with an in-process router, fault injection, and, where their
binaries are installed, real HAProxy, Prometheus, Redis and PostgreSQL in front
of and beside them.

- :mod:`console.sandbox.fleet`: the fleet process (``python -m console.sandbox.fleet``).
- :mod:`console.sandbox.services`: one orchestrator; an environment's ingress.
- :mod:`console.sandbox.traffic`: the traffic generator and the split router.
- :mod:`console.sandbox.faults`: fault kinds and the fault table.
- :mod:`console.sandbox.httpd`: the minimal HTTP/1.1 server and client they share.
- :mod:`console.sandbox.estate`: fleet plus engines, and the console config for them.
- :mod:`console.sandbox.cli`: ``sandbox up``, ``sandbox fault``, ``--sandbox``.
"""
