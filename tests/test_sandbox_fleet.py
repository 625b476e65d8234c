"""The sandbox fleet, as a real subprocess: /health, /metrics, faults, router, control.

Each test talks HTTP to a private fleet (``python -m console.sandbox.fleet``) started for this
module with its traffic generator at 0 requests/s, so the tests decide exactly which requests
reach which service. Faults are cleared and the traffic reset after every test. The shared
session ``fleet`` fixture in conftest is not used here: these tests break things on purpose.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
HASH = "cdd01ef066bc6cf2"
SERVICES = (
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
AUTH = {"Authorization": "Bearer test", "X-Constitutional-Hash": HASH}


@dataclass
class RunningFleet:
    """A private fleet subprocess and what its state file says."""

    proc: subprocess.Popen[bytes]
    state: dict[str, Any]
    log_path: Path

    @property
    def control(self) -> str:
        return str(self.state["control_url"])

    def ingress(self, env: str) -> str:
        return str(self.state["ingress"][env])

    def service_url(self, env: str, name: str) -> str:
        for entry in self.state["services"]:
            if entry["environment"] == env and entry["service"] == name:
                return str(entry["base_url"])
        raise KeyError((env, name))


def start_fleet(workdir: Path, *extra: str) -> RunningFleet:
    """Start ``python -m console.sandbox.fleet`` and wait for its state file."""
    state_file = workdir / "state.json"
    log_path = workdir / "fleet.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    argv = [
        sys.executable,
        "-m",
        "console.sandbox.fleet",
        "--hash",
        HASH,
        "--state-file",
        str(state_file),
        *extra,
    ]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while True:
        try:
            state = json.loads(state_file.read_text())
            break
        except (OSError, ValueError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"fleet did not start:\n{log_path.read_text()[-3000:]}", pytrace=False)
        time.sleep(0.05)
    return RunningFleet(proc, state, log_path)


def stop_fleet(fleet: RunningFleet) -> int:
    """SIGTERM the fleet and return its exit status (SIGKILL after 10 s)."""
    if fleet.proc.poll() is None:
        fleet.proc.send_signal(signal.SIGTERM)
        try:
            fleet.proc.wait(10)
        except subprocess.TimeoutExpired:
            fleet.proc.kill()
            fleet.proc.wait()
    return fleet.proc.returncode


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    fleet = start_fleet(tmp_path_factory.mktemp("sandbox-fleet"), "--rate", "0", "--seed", "7")
    try:
        yield fleet
    finally:
        stop_fleet(fleet)


@pytest.fixture(autouse=True)
def _reset(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "sandbox" in request.fixturenames:
        fleet: RunningFleet = request.getfixturevalue("sandbox")
        with httpx.Client(timeout=5) as client:
            client.post(f"{fleet.control}/control/clear", json={}).raise_for_status()
            client.put(f"{fleet.control}/control/split", json={"green_percentage": 0})
            client.put(
                f"{fleet.control}/control/traffic", json={"target": None, "rate": 0, "probe": {}}
            ).raise_for_status()


# -- helpers --------------------------------------------------------------------------------


def control(fleet: RunningFleet, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, f"{fleet.control}{path}", json=body, timeout=5)


def inject(
    fleet: RunningFleet, env: str, kind: str, service: str | None = None, **extra: Any
) -> None:
    body: dict[str, Any] = {"environment": env, "kind": kind, **extra}
    if service is not None:
        body["service"] = service
    response = control(fleet, "POST", "/control/fault", body)
    assert response.status_code == 200, response.text


def clear(fleet: RunningFleet, **scope: str) -> None:
    response = control(fleet, "POST", "/control/clear", scope)
    assert response.status_code == 200, response.text


def send(url: str, count: int, path: str = "/api/v1/test") -> list[httpx.Response]:
    with httpx.Client(timeout=10) as client:
        return [client.get(url + path, headers=AUTH) for _ in range(count)]


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base_url: str, client: httpx.Client | None = None) -> tuple[dict[str, str], Samples]:
    """Parse a service's /metrics: family name -> type, and every sample by name and labels."""
    response = (client or httpx).get(base_url + "/metrics", timeout=5)
    assert response.status_code == 200
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def requests_by_env(fleet: RunningFleet) -> dict[str, float]:
    """Sum of acgs_requests_total over each environment's nine services."""
    totals = {"blue": 0.0, "green": 0.0}
    with httpx.Client() as client:
        for entry in fleet.state["services"]:
            _, samples = scrape(entry["base_url"], client)
            totals[entry["environment"]] += sum(
                v for (name, _), v in samples.items() if name == "acgs_requests_total"
            )
    return totals


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.2)


# -- the contract ---------------------------------------------------------------------------


def test_state_file_lists_control_ingresses_and_eighteen_services(sandbox: RunningFleet) -> None:
    state = sandbox.state
    assert set(state) == {"control_url", "ingress", "services"}
    assert set(state["ingress"]) == {"blue", "green"}
    assert len(state["services"]) == 18
    for env in ("blue", "green"):
        names = [s["service"] for s in state["services"] if s["environment"] == env]
        assert sorted(names) == sorted(SERVICES)
    for entry in state["services"]:
        assert set(entry) == {"environment", "service", "base_url"}
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", entry["base_url"])
    urls = [s["base_url"] for s in state["services"]]
    urls += [state["control_url"], *state["ingress"].values()]
    assert len(set(urls)) == 21, "every listener has its own port"


@pytest.mark.parametrize("env", ["blue", "green"])
def test_health_answers_the_acgs_body_and_hash_header(sandbox: RunningFleet, env: str) -> None:
    with httpx.Client(timeout=5) as client:
        for name in SERVICES:
            response = client.get(sandbox.service_url(env, name) + "/health")
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            assert response.headers["x-constitutional-hash"] == HASH
            body = response.json()
            assert body["status"] == "healthy"
            assert body["service"] == name
            assert body["environment"] == env
            assert body["constitutional_hash"] == HASH
            assert re.fullmatch(r"\d+\.\d+\.\d+", body["version"])
            assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None


EXPECTED_FAMILIES = {
    "acgs_request_duration_seconds": "histogram",
    "acgs_requests": "counter",
    "acgs_cache_hit_rate": "gauge",
    "acgs_constitutional_compliance_score": "gauge",
    "acgs_constitutional_hash_validation_failures": "counter",
    "acgs_authentication_failures": "counter",
}


@pytest.mark.parametrize("env", ["blue", "green"])
def test_metrics_have_the_acgs_names_labelled_by_environment_and_service(
    sandbox: RunningFleet, env: str
) -> None:
    responses = send(sandbox.ingress(env), 18)
    assert [r.status_code for r in responses] == [200] * 18
    for name in SERVICES:
        types, samples = scrape(sandbox.service_url(env, name))
        assert {k: types.get(k) for k in EXPECTED_FAMILIES} == EXPECTED_FAMILIES
        for (sample_name, labels), _ in samples.items():
            if sample_name.startswith("acgs_"):
                assert dict(labels)["environment"] == env
                assert dict(labels)["service"] == name
        own = {"environment": env, "service": name}
        buckets = {
            dict(labels)["le"]
            for (sample_name, labels) in samples
            if sample_name == "acgs_request_duration_seconds_bucket"
        }
        assert {"0.001", "0.002", "0.003", "0.004", "0.005", "+Inf"} <= buckets
        assert value(samples, "acgs_request_duration_seconds_count", **own) >= 2
        assert value(samples, "acgs_requests_total", **own, status_code="200") >= 2
        assert 0.0 <= value(samples, "acgs_cache_hit_rate", **own) <= 1.0
        assert value(samples, "acgs_constitutional_compliance_score", **own) == 100.0
        assert value(samples, "acgs_constitutional_hash_validation_failures_total", **own) == 0
        assert value(samples, "acgs_authentication_failures_total", **own) == 0


def test_ingress_dispatches_round_robin_over_the_nine(sandbox: RunningFleet) -> None:
    responses = send(sandbox.ingress("blue"), 18)
    served = [r.headers["x-acgs-served-by"] for r in responses]
    assert sorted(served) == sorted(f"blue/{n}" for n in SERVICES for _ in range(2))
    assert all(r.headers["x-constitutional-hash"] == HASH for r in responses)


def test_a_request_without_credentials_counts_as_an_authentication_failure(
    sandbox: RunningFleet,
) -> None:
    url = sandbox.service_url("green", "security_orchestrator")
    own = {"environment": "green", "service": "security_orchestrator"}
    before = value(scrape(url)[1], "acgs_authentication_failures_total", **own)
    assert httpx.get(url + "/api/v1/secure", timeout=5).status_code == 401
    assert value(scrape(url)[1], "acgs_authentication_failures_total", **own) == before + 1


# -- faults ---------------------------------------------------------------------------------


def test_down_service_refuses_connections_and_its_traffic_gets_503(sandbox: RunningFleet) -> None:
    url = sandbox.service_url("green", "cache_optimizer")
    inject(sandbox, "green", "down", service="cache_optimizer")
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=2)
    other = sandbox.service_url("green", "performance_suite")
    assert httpx.get(other + "/health", timeout=2).status_code == 200
    responses = send(sandbox.ingress("green"), 9)
    failed = [r for r in responses if r.status_code == 503]
    assert [r.headers["x-acgs-served-by"] for r in failed] == ["green/cache_optimizer"]
    ingress_health = httpx.get(sandbox.ingress("green") + "/health", timeout=2).json()
    assert ingress_health["status"] == "degraded"
    assert ingress_health["services_down"] == ["cache_optimizer"]

    clear(sandbox, environment="green", service="cache_optimizer")
    assert httpx.get(url + "/health", timeout=2).json()["status"] == "healthy"


def test_down_environment_refuses_its_ingress_and_every_service(sandbox: RunningFleet) -> None:
    inject(sandbox, "green", "down")
    for url in [sandbox.ingress("green")] + [sandbox.service_url("green", n) for n in SERVICES]:
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=2)
    assert httpx.get(sandbox.service_url("blue", "cache_optimizer") + "/health").status_code == 200
    state = control(sandbox, "GET", "/control/state").json()
    assert not state["listening"]["green/ingress"]
    assert state["listening"]["blue/ingress"]

    clear(sandbox, environment="green")
    for url in [sandbox.ingress("green")] + [sandbox.service_url("green", n) for n in SERVICES]:
        assert httpx.get(url + "/health", timeout=2).status_code == 200


def _share_within_5ms(before: Samples, after: Samples, own: dict[str, str]) -> float:
    def delta(name: str, **labels: str) -> float:
        return value(after, name, **own, **labels) - value(before, name, **own, **labels)

    count = delta("acgs_request_duration_seconds_count")
    assert count > 0
    return delta("acgs_request_duration_seconds_bucket", le="0.005") / count


def test_slow_multiplies_the_latency_the_histogram_records(sandbox: RunningFleet) -> None:
    url = sandbox.service_url("blue", "performance_suite")
    own = {"environment": "blue", "service": "performance_suite"}
    first = scrape(url)[1]
    send(url, 40)
    healthy = scrape(url)[1]
    assert _share_within_5ms(first, healthy, own) >= 0.9

    inject(sandbox, "blue", "slow", value=10)
    send(url, 40)
    slow = scrape(url)[1]
    assert _share_within_5ms(healthy, slow, own) <= 0.5

    clear(sandbox, environment="blue")
    send(url, 40)
    assert _share_within_5ms(slow, scrape(url)[1], own) >= 0.9


def test_error_rate_answers_500_and_health_says_degraded(sandbox: RunningFleet) -> None:
    inject(sandbox, "blue", "error_rate", value=1.0)
    own = {"environment": "blue", "service": "test_orchestrator"}
    url = sandbox.service_url("blue", "test_orchestrator")
    before = value(scrape(url)[1], "acgs_requests_total", **own, status_code="500")
    responses = send(sandbox.ingress("blue"), 18)
    assert {r.status_code for r in responses} == {500}
    assert value(scrape(url)[1], "acgs_requests_total", **own, status_code="500") == before + 2
    for name in SERVICES:
        health = httpx.get(sandbox.service_url("blue", name) + "/health", timeout=2)
        assert health.status_code == 200
        assert health.json()["status"] == "degraded"

    clear(sandbox)
    assert httpx.get(url + "/health", timeout=2).json()["status"] == "healthy"
    assert {r.status_code for r in send(sandbox.ingress("blue"), 9)} == {200}


def test_wrong_hash_is_carried_and_counted_as_validation_failures(sandbox: RunningFleet) -> None:
    inject(sandbox, "green", "wrong_hash", value="feedfacefeedface")
    url = sandbox.service_url("green", "unified_orchestrator")
    own = {"environment": "green", "service": "unified_orchestrator"}
    health = httpx.get(url + "/health", timeout=2)
    assert health.headers["x-constitutional-hash"] == "feedfacefeedface"
    assert health.json()["constitutional_hash"] == "feedfacefeedface"
    before = value(scrape(url)[1], "acgs_constitutional_hash_validation_failures_total", **own)
    responses = send(sandbox.ingress("green"), 18)
    assert {r.headers["x-constitutional-hash"] for r in responses} == {"feedfacefeedface"}
    after = scrape(url)[1]
    assert value(after, "acgs_constitutional_hash_validation_failures_total", **own) == before + 2
    assert value(after, "acgs_constitutional_compliance_score", **own) < 100.0

    clear(sandbox, environment="green")
    health = httpx.get(url + "/health", timeout=2)
    assert health.headers["x-constitutional-hash"] == HASH
    assert health.json()["constitutional_hash"] == HASH


def test_missing_hash_drops_header_and_field(sandbox: RunningFleet) -> None:
    inject(sandbox, "blue", "missing_hash", service="security_orchestrator")
    url = sandbox.service_url("blue", "security_orchestrator")
    own = {"environment": "blue", "service": "security_orchestrator"}
    health = httpx.get(url + "/health", timeout=2)
    assert "x-constitutional-hash" not in health.headers
    assert "constitutional_hash" not in health.json()
    assert health.json()["status"] == "healthy"
    before = value(scrape(url)[1], "acgs_constitutional_hash_validation_failures_total", **own)
    send(url, 5)
    after = value(scrape(url)[1], "acgs_constitutional_hash_validation_failures_total", **own)
    assert after == before + 5
    # Its neighbours are untouched.
    neighbour = httpx.get(sandbox.service_url("blue", "cache_optimizer") + "/health", timeout=2)
    assert neighbour.headers["x-constitutional-hash"] == HASH

    clear(sandbox, environment="blue", service="security_orchestrator")
    assert httpx.get(url + "/health", timeout=2).headers["x-constitutional-hash"] == HASH


def test_garbage_makes_health_not_json(sandbox: RunningFleet) -> None:
    inject(sandbox, "green", "garbage", service="documentation_orchestrator")
    url = sandbox.service_url("green", "documentation_orchestrator")
    health = httpx.get(url + "/health", timeout=2)
    assert health.status_code == 200
    with pytest.raises(ValueError):
        json.loads(health.content)
    # /metrics still parses: only the health body is broken.
    assert "acgs_requests" in scrape(url)[0]

    clear(sandbox, environment="green", service="documentation_orchestrator")
    assert httpx.get(url + "/health", timeout=2).json()["status"] == "healthy"


def test_hang_accepts_and_never_answers_until_cleared(sandbox: RunningFleet) -> None:
    inject(sandbox, "blue", "hang", service="monitoring_orchestrator")
    url = sandbox.service_url("blue", "monitoring_orchestrator")
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(url + "/health", timeout=httpx.Timeout(0.5, connect=2))
    # Requests whose clients gave up are let go (checked about once a second).
    wait_until(lambda: control(sandbox, "GET", "/control/state").json()["held_requests"] == 0)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(httpx.get, url + "/health", timeout=15)
        wait_until(lambda: control(sandbox, "GET", "/control/state").json()["held_requests"] == 1)
        assert not waiting.done()
        clear(sandbox, environment="blue", service="monitoring_orchestrator")
        assert waiting.result(timeout=15).json()["status"] == "healthy"
    assert control(sandbox, "GET", "/control/state").json()["held_requests"] == 0


def test_hang_on_an_environment_holds_its_ingress_traffic(sandbox: RunningFleet) -> None:
    inject(sandbox, "green", "hang")
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(sandbox.ingress("green") + "/api/v1/x", headers=AUTH, timeout=0.5)
    assert httpx.get(sandbox.ingress("blue") + "/api/v1/x", headers=AUTH).status_code == 200
    clear(sandbox, environment="green")
    assert httpx.get(sandbox.ingress("green") + "/api/v1/x", headers=AUTH).status_code == 200


def test_cache_miss_lowers_the_cache_hit_rate(sandbox: RunningFleet) -> None:
    url = sandbox.service_url("green", "cache_optimizer")
    own = {"environment": "green", "service": "cache_optimizer"}
    before = value(scrape(url)[1], "acgs_cache_hit_rate", **own)
    assert before > 0.85
    inject(sandbox, "green", "cache_miss", service="cache_optimizer", value=0.0)
    send(url, 100)
    after = value(scrape(url)[1], "acgs_cache_hit_rate", **own)
    assert after < before - 0.1


def test_clear_is_scoped_to_service_environment_or_all(sandbox: RunningFleet) -> None:
    inject(sandbox, "green", "slow", value=3)
    inject(sandbox, "green", "wrong_hash", service="test_orchestrator")
    inject(sandbox, "blue", "garbage")
    url = sandbox.service_url("green", "test_orchestrator")
    assert httpx.get(url + "/health").headers["x-constitutional-hash"] != HASH

    clear(sandbox, environment="green", service="test_orchestrator")
    faults = control(sandbox, "GET", "/control/state").json()["faults"]
    assert {(f["environment"], f["service"], f["kind"]) for f in faults} == {
        ("green", None, "slow"),
        ("blue", None, "garbage"),
    }
    assert httpx.get(url + "/health").headers["x-constitutional-hash"] == HASH

    clear(sandbox, environment="green")
    faults = control(sandbox, "GET", "/control/state").json()["faults"]
    assert [(f["environment"], f["kind"]) for f in faults] == [("blue", "garbage")]

    clear(sandbox)
    assert control(sandbox, "GET", "/control/state").json()["faults"] == []


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"environment": "purple", "kind": "down"}, "unknown environment 'purple'"),
        ({"environment": "blue", "service": "nope", "kind": "down"}, "unknown service 'nope'"),
        ({"environment": "blue", "kind": "explode"}, "unknown fault kind 'explode'"),
        ({"environment": "blue"}, "missing field 'kind'"),
        ({"environment": "blue", "kind": "slow", "value": 0.1}, "slow factor"),
        ({"environment": "blue", "kind": "error_rate", "value": 1.5}, "between 0 and 1"),
        ({"environment": "blue", "kind": "slow", "value": "fast"}, "must be a number"),
        ({"environment": "blue", "kind": "down", "value": 3}, "takes no value"),
        ([1, 2], "JSON object"),
    ],
)
def test_control_rejects_bad_fault_requests_with_a_reason(
    sandbox: RunningFleet, body: Any, needle: str
) -> None:
    response = control(sandbox, "POST", "/control/fault", body)
    assert response.status_code == 400
    assert needle in response.json()["error"]
    assert control(sandbox, "GET", "/control/state").json()["faults"] == []


def test_control_rejects_unknown_paths_methods_and_bad_values(sandbox: RunningFleet) -> None:
    assert control(sandbox, "GET", "/control/nothing").status_code == 404
    assert control(sandbox, "GET", "/control/fault").status_code == 405
    assert control(sandbox, "PUT", "/control/split", {"green_percentage": 101}).status_code == 400
    assert control(sandbox, "PUT", "/control/split", {"green_percentage": "x"}).status_code == 400
    assert control(sandbox, "PUT", "/control/traffic", {"rate": -1}).status_code == 400
    assert control(sandbox, "PUT", "/control/traffic", {"target": "ftp://x"}).status_code == 400
    assert (
        control(sandbox, "POST", "/control/clear", {"service": "cache_optimizer"}).status_code
        == 400
    )
    raw = httpx.post(f"{sandbox.control}/control/fault", content=b"{not json", timeout=5)
    assert raw.status_code == 400
    assert control(sandbox, "GET", "/control/split").json()["green_percentage"] == 0


# -- traffic ----------------------------------------------------------------------------------


def test_router_honours_the_green_percentage(sandbox: RunningFleet) -> None:
    split = control(sandbox, "PUT", "/control/split", {"green_percentage": 30})
    assert split.json() == {
        "green_percentage": 30.0,
        "blue_percentage": 70.0,
        "router_active": True,
    }
    before = requests_by_env(sandbox)
    assert control(sandbox, "PUT", "/control/traffic", {"rate": 400}).status_code == 200

    def enough() -> bool:
        now = requests_by_env(sandbox)
        return sum(now.values()) - sum(before.values()) >= 400

    wait_until(enough)
    control(sandbox, "PUT", "/control/traffic", {"rate": 0})
    time.sleep(0.2)
    after = requests_by_env(sandbox)
    blue, green = (after[e] - before[e] for e in ("blue", "green"))
    assert 0.25 <= green / (blue + green) <= 0.35
    stats = control(sandbox, "GET", "/control/state").json()["traffic"]["stats"]
    assert stats["errors"] == {}
    assert stats["dropped"] == 0


def test_traffic_to_a_target_bypasses_the_router(sandbox: RunningFleet) -> None:
    control(sandbox, "PUT", "/control/split", {"green_percentage": 100})
    response = control(
        sandbox, "PUT", "/control/traffic", {"target": sandbox.ingress("blue"), "rate": 200}
    )
    assert response.json()["router_active"] is False
    before = requests_by_env(sandbox)
    wait_until(lambda: requests_by_env(sandbox)["blue"] - before["blue"] >= 50)
    control(sandbox, "PUT", "/control/traffic", {"rate": 0})
    time.sleep(0.2)
    assert requests_by_env(sandbox)["green"] == before["green"]


def test_probe_streams_load_one_environment_regardless_of_the_split(
    sandbox: RunningFleet,
) -> None:
    before = requests_by_env(sandbox)
    response = control(sandbox, "PUT", "/control/traffic", {"probe": {"green": 200}})
    assert response.json()["probe"] == {"green": 200.0}
    wait_until(lambda: requests_by_env(sandbox)["green"] - before["green"] >= 50)
    control(sandbox, "PUT", "/control/traffic", {"probe": {}})
    time.sleep(0.2)
    assert requests_by_env(sandbox)["blue"] == before["blue"]


def _blue_profile(fleet: RunningFleet) -> tuple[float, dict[float, float], list[float]]:
    """Blue's request total, its summed latency buckets (le -> count) and cache-hit gauges."""
    total = 0.0
    buckets: dict[float, float] = {}
    gauges: list[float] = []
    with httpx.Client() as client:
        for entry in fleet.state["services"]:
            if entry["environment"] != "blue":
                continue
            _, samples = scrape(entry["base_url"], client)
            for (name, labels), v in samples.items():
                if name == "acgs_requests_total":
                    total += v
                elif name == "acgs_request_duration_seconds_bucket":
                    le = float(dict(labels)["le"])
                    buckets[le] = buckets.get(le, 0.0) + v
                elif name == "acgs_cache_hit_rate":
                    gauges.append(v)
    return total, buckets, gauges


def test_default_traffic_is_150_per_second_with_p99_2_to_4_ms_and_90_percent_hits(
    tmp_path: Path,
) -> None:
    """The generator's defaults, measured from the services' own /metrics."""
    from backends.scrape import histogram_quantile

    fleet = start_fleet(tmp_path, "--seed", "11")  # no --rate: the default
    try:
        state = control(fleet, "GET", "/control/state").json()
        assert state["traffic"]["rate"] == 150.0
        assert state["split"]["green_percentage"] == 0.0  # all of it goes to blue
        time.sleep(1.5)  # past the start
        t0 = time.monotonic()
        total0, buckets0, _ = _blue_profile(fleet)
        time.sleep(4.0)
        total1, buckets1, gauges = _blue_profile(fleet)
        elapsed = time.monotonic() - t0
    finally:
        stop_fleet(fleet)

    rate = (total1 - total0) / elapsed
    assert 150 * 0.85 <= rate <= 150 * 1.15, f"{rate:.1f} requests/s"
    delta = sorted((le, buckets1[le] - buckets0.get(le, 0.0)) for le in buckets1)
    assert delta[-1][1] >= 400, delta  # enough requests for a P99
    p99_ms = 1000 * histogram_quantile(0.99, delta)
    assert 2.0 <= p99_ms <= 4.0, f"healthy P99 {p99_ms:.2f} ms"
    assert len(gauges) == 9
    hit_rate = sum(gauges) / len(gauges)
    assert 0.85 <= hit_rate <= 0.97, f"cache hit rate {hit_rate:.3f}"


def test_sigterm_shuts_the_fleet_down_cleanly(tmp_path: Path) -> None:
    fleet = start_fleet(tmp_path, "--rate", "50")
    url = fleet.service_url("blue", "performance_suite")
    assert httpx.get(url + "/health", timeout=2).status_code == 200
    assert stop_fleet(fleet) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=2)
