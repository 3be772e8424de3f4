"""Triton killed, stalled, and its Python stubs killed, under a steady stream of mixed events.

Each test starts a Triton of its own (never the session's, which other tests share) and one worker on
the session's broker. What holds (faultkit.assert_held): no event lost, none wrongly dead-lettered, the
group's lag back to 0. What the figures say is printed (FAULT FIGURES ...).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from faultkit import (
    REPO_ROOT,
    Fault,
    assert_held,
    crashes,
    fault_settings,
    kill_pid,
    mixed_events,
    readiness,
    report,
    run_scenario,
    signal_group,
    stub_pids,
    wait_for,
)

from tooling.embedded import Broker, TritonServer
from tooling.embedded.worker import WorkerProcess, http_get

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(1800)]

OUTAGE_S = 30.0  # how long Triton stays killed or stalled while the stream goes on


@pytest.fixture
def own_triton(tmp_path: Path) -> Iterator[TritonServer]:
    triton = TritonServer(REPO_ROOT / "triton_models", ["ecom_fusion"], log_dir=tmp_path)
    triton.start(timeout=600)
    try:
        yield triton
    finally:
        triton.stop()


def restart(triton: TritonServer) -> None:
    """What the deployment does (k8s restarts the container, compose's `restart: unless-stopped`)."""
    triton.stop()
    triton.start(timeout=600)


def test_triton_killed_then_restarted(
    broker: Broker,
    own_triton: TritonServer,
    unique_suffix: str,
    new_worker: Callable[..., WorkerProcess],
    request: pytest.FixtureRequest,
) -> None:
    settings = fault_settings(
        "f-tkill", unique_suffix, kafka_url=broker.url, triton_grpc_url=own_triton.grpc_url
    )
    worker = new_worker(settings)
    worker.start(timeout=600)
    notes: dict[str, object] = {}

    async def while_down() -> None:
        notes["not_ready_after_s"] = await asyncio.to_thread(
            wait_for, lambda: readiness(worker)[0] == 503, 60, "the worker says it is not ready"
        )

    fault = Fault(
        inject=own_triton.process.kill,  # SIGKILL to Triton and its stubs
        heal=lambda: own_triton.start(timeout=600),
        during_s=OUTAGE_S,
        during=while_down,
    )
    figures, accounting = asyncio.run(
        run_scenario(
            "triton killed, restarted", settings, lambda: [worker], fault, mixed_events(settings, 21)
        )
    )
    figures.notes.update(notes, ready_again=readiness(worker)[0] == 200)
    figures.worker_crashes = crashes([worker], alive=[worker])
    report(request, figures)
    assert_held(figures, accounting, [worker])


def test_triton_stalled_then_resumed(
    broker: Broker,
    own_triton: TritonServer,
    unique_suffix: str,
    new_worker: Callable[..., WorkerProcess],
    request: pytest.FixtureRequest,
) -> None:
    settings = fault_settings(
        "f-tstall", unique_suffix, kafka_url=broker.url, triton_grpc_url=own_triton.grpc_url
    )
    worker = new_worker(settings)
    worker.start(timeout=600)
    notes: dict[str, object] = {}

    def resume() -> None:
        signal_group(own_triton.process.pid, signal.SIGCONT)
        # Triton 2.51 has died of a SIGSTOP before (a segfault once resumed): whether it serves again on
        # its own is a figure; if it does not, the deployment's restart is what heals it.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and own_triton.process.alive() and not own_triton.ready():
            time.sleep(0.5)
        time.sleep(5)  # still alive a moment later?
        survived = own_triton.process.alive() and own_triton.ready()
        notes["triton_served_again_without_restart"] = survived
        if not survived:
            notes["triton_exit_code"] = own_triton.process.proc.poll() if own_triton.process.proc else None
            restart(own_triton)

    async def while_stalled() -> None:
        notes["not_ready_after_s"] = await asyncio.to_thread(
            wait_for, lambda: readiness(worker)[0] == 503, 120, "the worker says it is not ready"
        )
        notes["liveness_probe_exit"] = await asyncio.to_thread(run_check, k8s_stub_check(), own_triton)

    fault = Fault(
        inject=lambda: signal_group(own_triton.process.pid, signal.SIGSTOP),
        heal=resume,
        during_s=OUTAGE_S,
        during=while_stalled,
    )
    figures, accounting = asyncio.run(
        run_scenario("triton stalled, resumed", settings, lambda: [worker], fault, mixed_events(settings, 22))
    )
    figures.notes.update(notes)
    figures.worker_crashes = crashes([worker], alive=[worker])
    report(request, figures)
    assert notes["liveness_probe_exit"] == 3, "the liveness probe does not see a hung Triton"
    assert_held(figures, accounting, [worker])


# --- the Python stubs ------------------------------------------------------------------------------------
def k8s_stub_check() -> str:
    """The Python script of Triton's liveness probe in k8s/base/triton-deployment.yaml."""
    document = yaml.safe_load((REPO_ROOT / "k8s/base/triton-deployment.yaml").read_text())
    command = document["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]["command"]
    assert command[:2] == ["python3", "-c"]
    return str(command[2])


def compose_stub_check() -> tuple[str, str]:
    """The Python script in docker-compose.yml's Triton health check, and the shell around it."""
    document = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    kind, shell = document["services"]["triton"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    head, rest = shell.split("python3 -c '", 1)
    script, tail = rest.split("'", 1)
    return script, head + tail


def run_check(script: str, triton: TritonServer) -> int:
    """The probe's exit code against this Triton (its HTTP port in place of the pod's 8000)."""
    assert "http://localhost:8000" in script
    code = script.replace("http://localhost:8000", triton.http_url)
    return subprocess.run([sys.executable, "-c", code], timeout=120, check=False).returncode


def test_the_deployments_run_one_stub_check() -> None:
    script, shell = compose_stub_check()
    assert script.strip() == k8s_stub_check().strip()
    # Docker does not restart an unhealthy container: on exit 3 the check stops Triton (PID 1), and
    # `restart: unless-stopped` starts it again.
    assert "if [ $$rc -eq 3 ]; then kill 1; fi" in shell
    document = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    assert document["services"]["triton"]["restart"] == "unless-stopped"


def test_triton_stub_killed_readiness_says_so_and_a_restart_heals(
    broker: Broker,
    own_triton: TritonServer,
    unique_suffix: str,
    new_worker: Callable[..., WorkerProcess],
    request: pytest.FixtureRequest,
) -> None:
    settings = fault_settings(
        "f-stub", unique_suffix, kafka_url=broker.url, triton_grpc_url=own_triton.grpc_url
    )
    worker = new_worker(settings)
    worker.start(timeout=600)
    probe = k8s_stub_check()
    assert run_check(probe, own_triton) == 0, "the liveness probe fails a healthy Triton"
    notes: dict[str, object] = {}

    def kill_stubs() -> None:
        stubs = stub_pids(own_triton)
        assert stubs, "no Python stub process under this Triton"
        notes["stubs_killed"] = len(stubs)
        for pid in stubs:
            kill_pid(pid)

    async def while_dead() -> None:
        def says_why() -> bool:
            status, body = readiness(worker)
            return status == 503 and "Stub process" in str(body.get("detail", {}).get("triton", ""))

        notes["worker_not_ready_after_s"] = await asyncio.to_thread(
            wait_for, says_why, 120, "the worker's /readyz names the dead stub"
        )
        # Triton itself still says all is well: only a real inference shows the dead stubs.
        notes["triton_live"] = http_get(f"{own_triton.http_url}/v2/health/live")[0]
        notes["triton_ready"] = http_get(f"{own_triton.http_url}/v2/health/ready")[0]
        notes["model_ready"] = http_get(f"{own_triton.http_url}/v2/models/ecom_fusion/ready")[0]
        notes["stubs_back_by_themselves"] = bool(stub_pids(own_triton))
        notes["liveness_probe_exit"] = await asyncio.to_thread(run_check, probe, own_triton)

    fault = Fault(inject=kill_stubs, heal=lambda: restart(own_triton), during_s=OUTAGE_S, during=while_dead)
    figures, accounting = asyncio.run(
        run_scenario(
            "triton stubs killed, triton restarted",
            settings,
            lambda: [worker],
            fault,
            mixed_events(settings, 23),
        )
    )
    figures.notes.update(notes)
    figures.worker_crashes = crashes([worker], alive=[worker])
    report(request, figures)
    assert notes["liveness_probe_exit"] == 3, "the liveness probe does not see the dead stubs"
    assert run_check(probe, own_triton) == 0, "the liveness probe fails the restarted Triton"
    assert_held(figures, accounting, [worker])
