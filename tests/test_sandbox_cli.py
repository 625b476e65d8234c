"""``sandbox up``, ``sandbox fault`` and the background sandbox behind ``acgs-console --sandbox``.

The commands run as real subprocesses (``python -m console.sandbox ...``), as an operator would
run them; ``--engines auto`` is checked against the real HAProxy, Prometheus, Redis and
PostgreSQL (a missing binary fails under CI and skips elsewhere, naming it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from conftest import engine_or_report

from console.config import AppConfig, load_config
from console.engines import find_binary
from console.sandbox.cli import start_background_sandbox
from console.sandbox.estate import FleetInfo, SandboxEstate
from console.sandbox.faults import ENVIRONMENTS, SERVICES

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def sandbox_cmd(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "console.sandbox", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=_env(),
    )


def console_cmd(*argv: str) -> subprocess.CompletedProcess[str]:
    """``acgs-console ARGV``: the installed entry point's own code (``python -m console``)."""
    return subprocess.run(
        [sys.executable, "-m", "console", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=_env(),
    )


def control_state(cfg: AppConfig) -> dict[str, object]:
    assert cfg.sandbox is not None and cfg.sandbox.control_url
    response = httpx.get(cfg.sandbox.control_url + "/control/state", timeout=5)
    response.raise_for_status()
    state: dict[str, object] = response.json()
    return state


def test_up_without_engines_writes_a_config_that_fault_drives(tmp_path: Path) -> None:
    config = tmp_path / "sandbox.toml"
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "console.sandbox",
            "up",
            "--engines",
            "none",
            "--rate",
            "20",
            "--workdir",
            str(tmp_path / "work"),
            "--write-config",
            str(config),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=_env(),
    )
    try:
        deadline = time.monotonic() + 30
        while not config.is_file():
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "no config written"
            time.sleep(0.1)
        cfg, _ = load_config(config)
        assert cfg.traffic.kind == "sandbox"
        assert cfg.prometheus.url is None
        assert cfg.sandbox is not None and cfg.sandbox.real_engines == []
        assert "# Real engines: none." in config.read_text()
        url = cfg.env("green").services["cache_optimizer"].health_url
        assert httpx.get(url, timeout=5).json()["service"] == "cache_optimizer"

        # Exactly the command line, through the acgs-console entry point.
        done = console_cmd("sandbox", "fault", "--config", str(config), "green", "--slow", "10")
        assert done.returncode == 0, done.stderr
        assert "green: slow 10.0" in done.stdout
        faults = control_state(cfg)["faults"]
        assert faults == [{"environment": "green", "service": None, "kind": "slow", "value": 10.0}]
        done = sandbox_cmd(
            "fault", "--config", str(config), "green", "--service", "cache_optimizer", "--garbage"
        )
        assert done.returncode == 0, done.stderr
        assert httpx.get(url, timeout=5).content.startswith(b"\x00")

        refused = sandbox_cmd("fault", "--config", str(config), "green", "--error-rate", "2")
        assert refused.returncode == 2
        assert "between 0 and 1" in refused.stderr

        done = console_cmd("sandbox", "fault", "--config", str(config), "--clear")
        assert done.returncode == 0 and "no faults injected" in done.stdout
        assert control_state(cfg)["faults"] == []
        assert httpx.get(url, timeout=5).json()["status"] == "healthy"
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(30)
        log.close()
    assert status == 0, (tmp_path / "up.log").read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def test_up_refuses_to_overwrite_a_config_it_did_not_write(tmp_path: Path) -> None:
    theirs = tmp_path / "acgs-console.toml"
    theirs.write_text("# my production config\n")
    done = sandbox_cmd("up", "--engines", "none", "--write-config", str(theirs))
    assert done.returncode == 2
    assert "was not written by the sandbox" in done.stderr
    assert theirs.read_text() == "# my production config\n"


def test_fault_without_a_sandbox_config_explains_itself(tmp_path: Path) -> None:
    missing = sandbox_cmd("fault", "--config", str(tmp_path / "nope.toml"), "green", "--down")
    assert missing.returncode == 2
    assert "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_fault_against_a_stopped_sandbox_says_it_is_not_running(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    estate = SandboxEstate(tmp_path, engines="none")
    estate.fleet = FleetInfo(
        f"http://127.0.0.1:{dead_port}",
        {"blue": "http://127.0.0.1:1", "green": "http://127.0.0.1:2"},
        [
            {"environment": e, "service": n, "base_url": f"http://127.0.0.1:{dead_port}"}
            for e in ENVIRONMENTS
            for n in SERVICES
        ],
    )
    config = tmp_path / "stale.toml"
    estate.write_config(config)
    done = sandbox_cmd("fault", "--config", str(config), "blue", "--hang")
    assert done.returncode == 2
    assert "did not answer" in done.stderr and "sandbox up" in done.stderr


def test_background_sandbox_starts_and_stops_with_the_console(tmp_path: Path) -> None:
    config_path, handle = start_background_sandbox(engines="none", rate=10, workdir=tmp_path / "bg")
    try:
        cfg, _ = load_config(config_path)
        assert cfg.traffic.kind == "sandbox"
        assert (tmp_path / "bg" / "fleet.json").is_file(), "the estate lives in the given workdir"
        state = control_state(cfg)
        assert state["split"] == {
            "green_percentage": 0.0,
            "blue_percentage": 100.0,
            "router_active": True,
        }
        url = cfg.env("blue").services["performance_suite"].health_url
        assert httpx.get(url, timeout=5).status_code == 200
    finally:
        handle.stop()
    assert not handle.running
    assert handle.proc.returncode == 0
    assert not (tmp_path / "bg").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def test_readme_first_command_shows_the_console_on_the_sandbox(tmp_path: Path) -> None:
    """``acgs-console --sandbox`` in a 120x40 pseudo-terminal: the fleet's data on screen,
    ``q`` quits with 0, and the background sandbox goes with it."""
    import json

    from pty_support import Terminal, terminal_env

    env = terminal_env(
        tmp_path / "state",
        _env(),
        drop=("TEXTUAL", "ACGS_CONSOLE"),
        TMPDIR=str(tmp_path),  # the sandbox's work directory lands here, where we can see it
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )
    term = Terminal([sys.executable, "-m", "console", "--sandbox", "--engines", "none"], env)
    try:
        term.wait_for(
            "both fleets' orchestrators up on screen",
            lambda text: text.count("✔ up") >= 18 and "BLUE" in text and "GREEN" in text,
            60,
        )
        (work,) = tmp_path.glob("acgs-sandbox-*")
        services = json.loads((work / "fleet.json").read_text())["services"]
        url = services[0]["base_url"] + "/health"
        assert httpx.get(url, timeout=5).json()["status"] == "healthy"
        assert "traffic blue 100.0%" in term.text()

        term.press("q")
        deadline = time.monotonic() + 30
        while term.proc.poll() is None and time.monotonic() < deadline:
            term.pump(0.2)  # keep reading, or a full terminal would block the console
        assert term.proc.returncode == 0, term.text()
    finally:
        term.close()
    assert not work.exists(), "the background sandbox's work directory is removed"
    assert _refused_within(url, 10), "the background sandbox stops with the console"


@pytest.mark.engines
def test_up_with_engines_auto_uses_the_real_engines(tmp_path: Path) -> None:
    for binary in ("haproxy", "prometheus", "redis-server", "postgres"):
        engine_or_report(lambda binary=binary: find_binary(binary))
    config_path, handle = start_background_sandbox(
        engines="auto", rate=100, workdir=tmp_path / "auto"
    )
    try:
        cfg, _ = load_config(config_path)
        assert cfg.sandbox is not None
        fallbacks = [line for line in config_path.read_text().splitlines() if "default for" in line]
        assert cfg.sandbox.real_engines == ["haproxy", "prometheus", "redis", "postgresql"], (
            fallbacks
        )
        assert "# Real engines: haproxy, prometheus, redis, postgresql." in config_path.read_text()

        # Traffic goes through HAProxy: the generator's target is its frontend, and HAProxy's
        # own counters for the blue server grow.
        assert cfg.traffic.kind == "haproxy"
        traffic = control_state(cfg)["traffic"]
        assert isinstance(traffic, dict) and traffic["router_active"] is False
        assert traffic["target"].startswith("http://127.0.0.1:")

        def blue_sessions() -> int:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(cfg.traffic.admin)
                sock.sendall(b"show stat\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            for line in data.decode().splitlines():
                fields = line.split(",")
                if fields[:2] == ["acgs", "blue"]:
                    return int(fields[7])  # stot: total sessions
            raise AssertionError(f"no acgs/blue line in show stat:\n{data.decode()}")

        first = blue_sessions()
        deadline = time.monotonic() + 10
        while blue_sessions() <= first:
            assert time.monotonic() < deadline, "no traffic reached HAProxy's blue server"
            time.sleep(0.2)

        # Prometheus scrapes the services, labelled by environment and service.
        assert cfg.prometheus.url is not None
        deadline = time.monotonic() + 25
        query = 'acgs_requests_total{environment="green",service="unified_orchestrator"}'
        while True:
            body = httpx.get(
                cfg.prometheus.url + "/api/v1/query", params={"query": query}, timeout=5
            ).json()
            if body["data"]["result"]:
                break
            assert time.monotonic() < deadline, f"Prometheus has no {query}: {body}"
            time.sleep(0.5)

        # A Redis per environment, and PostgreSQL with a streaming replica.
        for env in ("blue", "green"):
            endpoint = cfg.env(env).redis
            assert endpoint is not None
            assert redis.Redis.from_url(endpoint.url, socket_timeout=2).ping() is True
        pg = cfg.env("blue").postgres
        assert pg is not None
        with psycopg.connect(pg.replica_dsns[0], connect_timeout=5) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        with psycopg.connect(pg.primary_dsn, connect_timeout=5) as conn:
            rows = conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()
            assert rows == (1,)
    finally:
        handle.stop()
    assert handle.proc.returncode == 0
    assert not (tmp_path / "auto").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(cfg.prometheus.url + "/-/ready", timeout=2)


def _refused_within(url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
        except httpx.ConnectError:
            return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def test_nothing_outlives_a_console_killed_with_sigkill(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from console.sandbox.cli import start_background_sandbox\n"
        "path, handle = start_background_sandbox(\n"
        f"    engines='none', rate=5, workdir={str(tmp_path / 'bg')!r}\n"
        ")\n"
        "print(path, flush=True)\n"
        "time.sleep(600)\n"
    )
    console = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT, env=_env(), text=True
    )
    try:
        assert console.stdout is not None
        config_path = Path(console.stdout.readline().strip())
        cfg, _ = load_config(config_path)
        assert cfg.sandbox is not None and cfg.sandbox.control_url
        control = cfg.sandbox.control_url + "/control/state"
        assert httpx.get(control, timeout=5).status_code == 200
    finally:
        console.kill()
        console.wait()
    assert _refused_within(control, 15), "the sandbox outlived the console that started it"


def test_a_fleet_whose_sandbox_up_is_killed_stops_by_itself(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "console.sandbox",
            "up",
            "--engines",
            "none",
            "--rate",
            "5",
            "--workdir",
            str(tmp_path / "work"),
            "--write-config",
            str(config),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env=_env(),
    )
    try:
        deadline = time.monotonic() + 30
        while not config.is_file():
            assert up.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        cfg, _ = load_config(config)
        assert cfg.sandbox is not None and cfg.sandbox.control_url
        control = cfg.sandbox.control_url + "/control/state"
    finally:
        up.kill()
        up.wait()
    assert _refused_within(control, 10), "the fleet outlived its sandbox up"
