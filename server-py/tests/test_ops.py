"""Operations as an operator meets them: /metrics parsed by prometheus_client, health and
readiness through a server's life, /status and `inferential top`, SIGHUP reload of a running
`inferential serve`, JSON logs, the Grafana dashboard, the configuration reference, the demo."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, get_args, get_origin

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from server_helpers import TEST_MODELS, eventually, running_server

from inferential import Connection, ModelError, UnknownModel
from inferential.cli import main
from inferential.config import InferentialConfig, ModelConfig
from inferential.dispatch.base import BackendHealth, ModelHealth
from inferential.metrics.prometheus import PrometheusExporter
from inferential.server import BackgroundServer, Server
from inferential.server.http import HttpEndpoint
from inferential.server.status import model_replicas, queue_depths

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "inferential-dashboard.json"
ZEROS = np.zeros(3, np.float32)


# -- helpers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def status_of(base: str) -> dict[str, Any]:
    code, body = http_get(f"{base}/status")
    assert code == 200, body
    return json.loads(body)


def scrape(base: str) -> dict[str, Any]:
    code, body = http_get(f"{base}/metrics")
    assert code == 200
    return {family.name: family for family in text_string_to_metric_families(body)}


def samples(families: dict[str, Any], sample_name: str) -> dict[tuple, float]:
    """{sorted label items: value} of one sample name (e.g. inferential_replies_total)."""
    out = {}
    for family in families.values():
        for s in family.samples:
            if s.name == sample_name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    return samples(families, sample_name)[tuple(sorted(labels.items()))]


def exported_sample_names(families: dict[str, Any]) -> set[str]:
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    return {f.name + suffix for f in families.values() for suffix in suffixes[f.type]}


# -- Prometheus ---------------------------------------------------------------------------


def test_metrics_count_replies_by_model_and_status_and_parse_with_prometheus_client():
    with running_server(models=TEST_MODELS) as (server, endpoint):
        http = HttpEndpoint(server, "127.0.0.1", 0)
        try:
            with (
                Connection(server=endpoint, client_id="arm-a") as a,
                Connection(server=endpoint, client_id="arm-b") as b,
            ):
                for _ in range(5):
                    assert a.model("noop", latency_budget_ms=5000).request(timeout_ms=5000, x=ZEROS).ok
                for _ in range(3):
                    assert b.model("noop", latency_budget_ms=5000).request(timeout_ms=5000, x=ZEROS).ok
                for _ in range(2):
                    with pytest.raises(ModelError):
                        b.model("failing", latency_budget_ms=5000).request(timeout_ms=5000, fail="yes")
                with pytest.raises(UnknownModel):
                    b.model("nope").request(timeout_ms=5000, x=ZEROS)

                # The last reply is counted just after it is sent: wait until all 11 are.
                fams = eventually(
                    lambda: (
                        (f := scrape(http.url)) and sum(samples(f, "inferential_replies_total").values()) == 11 and f
                    ),
                    what="11 replies in /metrics",
                )
        finally:
            http.close()

    # Replies by model and status: exactly what was sent, nothing else.
    assert samples(fams, "inferential_replies_total") == {
        (("model", "noop"), ("status", "OK")): 8.0,
        (("model", "failing"), ("status", "MODEL_ERROR")): 2.0,
        # A model id nobody serves is the sender's word: it never becomes a label.
        (("model", ""), ("status", "UNKNOWN_MODEL")): 1.0,
    }
    assert samples(fams, "inferential_rejected_observations_total") == {(("status", "UNKNOWN_MODEL"),): 1.0}

    # Histograms: one observation per successful request (latency, queue wait), per
    # admitted observation (staleness), per batch (inference, batch size).
    assert value(fams, "inferential_server_latency_seconds_count", model="noop") == 8
    assert value(fams, "inferential_server_latency_seconds_bucket", model="noop", le="+Inf") == 8
    assert value(fams, "inferential_queue_wait_seconds_count", model="noop") == 8
    assert value(fams, "inferential_observation_staleness_seconds_count", model="noop") == 8
    assert value(fams, "inferential_observation_staleness_seconds_count", model="failing") == 2
    batches = value(fams, "inferential_batch_size_count", model="noop")
    assert 1 <= batches <= 8 and value(fams, "inferential_batch_size_sum", model="noop") == 8
    assert value(fams, "inferential_inference_seconds_count", model="noop") == batches
    assert value(fams, "inferential_server_latency_seconds_sum", model="noop") > 0
    assert (("model", "failing"),) not in samples(fams, "inferential_server_latency_seconds_count")  # OK replies only

    # SLO per robot and model: counters and the windowed attainment gauge.
    assert value(fams, "inferential_slo_requests_total", client="arm-a", model="noop") == 5
    assert value(fams, "inferential_slo_met_total", client="arm-a", model="noop") == 5
    assert value(fams, "inferential_slo_requests_total", client="arm-b", model="failing") == 2
    assert samples(fams, "inferential_slo_attainment") == {
        (("client", "arm-a"), ("model", "noop")): 1.0,
        (("client", "arm-b"), ("model", "noop")): 1.0,
        (("client", "arm-b"), ("model", "failing")): 0.0,
    }

    # Gauges read at scrape time.
    assert samples(fams, "inferential_queue_depth") == {(("model", m),): 0.0 for m in TEST_MODELS}
    assert samples(fams, "inferential_model_replicas") == {(("model", m),): 1.0 for m in TEST_MODELS}
    assert samples(fams, "inferential_batches_in_flight") == {(("model", m),): 0.0 for m in TEST_MODELS}
    assert value(fams, "inferential_active_robots") == 2
    assert value(fams, "inferential_pending_requests") == 0
    assert value(fams, "inferential_ready") == 1
    assert samples(fams, "inferential_scheduler_info") == {(("strategy", "edf"),): 1.0}  # the default


def test_the_exporter_sums_points_as_recorded_exactly_from_any_thread_without_a_callback_thread():
    """The exporter is a sink of the metrics store: nothing queued, no thread of its own,
    each point counted once even when model workers record beside the event loop."""
    server = Server(config=InferentialConfig(models=[ModelConfig(name="noop", target=TEST_MODELS["noop"])]))
    exporter = PrometheusExporter(server)
    try:

        def record(n: int) -> None:
            for _ in range(n):
                server.metrics.record("e2e_latency_ms", 2.0, {"model": "noop", "client": "arm"})
                server.metrics.increment("replies", {"model": "noop", "status": "OK"})

        threads = [threading.Thread(target=record, args=(5_000,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        server.metrics.record("e2e_latency_ms", 1.0, {"model": "noop"})  # exactly on a bucket's bound
        server.metrics.record("e2e_latency_ms", 9000.0, {"model": "noop"})  # past the last one
        assert server.metrics._thread is None  # no callback thread was started for the exporter
        fams = {f.name: f for f in text_string_to_metric_families(exporter.render().decode())}
    finally:
        exporter.close()
    assert value(fams, "inferential_replies_total", model="noop", status="OK") == 20_000
    assert value(fams, "inferential_server_latency_seconds_count", model="noop") == 20_002
    assert value(fams, "inferential_server_latency_seconds_bucket", model="noop", le="0.001") == 1  # le: <= bound
    assert value(fams, "inferential_server_latency_seconds_bucket", model="noop", le="0.002") == 20_001
    assert value(fams, "inferential_server_latency_seconds_bucket", model="noop", le="5.0") == 20_001
    assert value(fams, "inferential_server_latency_seconds_bucket", model="noop", le="+Inf") == 20_002
    assert value(fams, "inferential_server_latency_seconds_sum", model="noop") == pytest.approx(20_000 * 0.002 + 9.001)
    server.metrics.record("e2e_latency_ms", 2.0, {"model": "noop"})  # after close: not summed
    fams = {f.name: f for f in text_string_to_metric_families(exporter.render().decode())}
    assert value(fams, "inferential_server_latency_seconds_count", model="noop") == 20_002


def test_grafana_dashboard_queries_only_exported_metrics_and_shows_each_of_them():
    server = Server(config=InferentialConfig(models=[ModelConfig(name="noop", target=TEST_MODELS["noop"])]))
    text = PrometheusExporter(server).render().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    exported = exported_sample_names(families)

    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    assert len(queries) > 20
    used = {name for q in queries for name in re.findall(r"\binferential_[a-z0-9_]+", q)}
    assert used - exported == set(), "dashboard queries series the server does not export"
    unused = {f for f in families if not any(n.startswith(f) for n in used)}
    assert unused == set(), "exported series missing from the dashboard"
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in dashboard["panels"] if "datasource" in p)


# -- health and readiness -----------------------------------------------------------------


def test_healthz_and_readyz_follow_startup_and_shutdown_which_answers_queued_requests():
    config = InferentialConfig(
        transport={"bind": "tcp://127.0.0.1:0"},
        scheduling={"max_batch_size": 1},
        models=[ModelConfig(name="slow", target="inferential.models.testing:Sleep", options={"base_ms": 1500})],
    )
    server = Server(config=config)
    http = HttpEndpoint(server, "127.0.0.1", 0)
    background = BackgroundServer(server)
    try:
        assert http_get(f"{http.url}/healthz")[0] == 503  # no event loop yet
        assert http_get(f"{http.url}/readyz") == (503, "not ready: models loading or server shutting down\n")
        endpoint = background.start()
        assert http_get(f"{http.url}/healthz") == (200, "ok\n")
        assert http_get(f"{http.url}/readyz") == (200, "ready\n")
        assert http_get(f"{http.url}/nowhere")[0] == 404

        outcomes: dict[str, str] = {}

        def robot(name: str) -> None:
            with Connection(server=endpoint, client_id=name) as conn:
                try:
                    conn.model("slow", latency_budget_ms=5000).request(timeout_ms=5000, x=ZEROS)
                    outcomes[name] = "OK"
                except Exception as err:
                    outcomes[name] = type(err).__name__

        threads = [threading.Thread(target=robot, args=(f"r{i}",)) for i in range(3)]
        threads[0].start()
        eventually(lambda: status_of(http.url)["models"]["slow"]["in_flight"] == 1, what="r0's batch to start")
        for t in threads[1:]:
            t.start()
        eventually(lambda: status_of(http.url)["pending"] == 3, what="r1 and r2 queued")
        fams = scrape(http.url)
        assert value(fams, "inferential_queue_depth", model="slow") == 2
        assert value(fams, "inferential_batches_in_flight", model="slow") == 1
        assert value(fams, "inferential_pending_requests") == 3
        assert status_of(http.url)["per_model"]["slow"]["queue"] == 2

        stopper = threading.Thread(target=background.stop)
        stopper.start()
        # Not ready as soon as shutdown begins; still alive while the running batch finishes.
        eventually(lambda: http_get(f"{http.url}/readyz")[0] == 503, what="/readyz 503 during shutdown")
        assert status_of(http.url)["models"]["slow"]["in_flight"] == 1
        assert http_get(f"{http.url}/healthz")[0] == 200
        for t in threads:
            t.join(15)
        stopper.join(30)
        # r0's reply leaves just before the socket closes: the robot must still get it.
        assert outcomes == {"r0": "OK", "r1": "ShuttingDown", "r2": "ShuttingDown"}
        assert http_get(f"{http.url}/healthz")[0] == 503  # the loop is gone
    finally:
        background.stop()
        http.close()


# -- /status and `inferential top` ----------------------------------------------------------


def test_replicas_and_queue_depths_are_read_from_the_health_record_and_every_scheduler_shape():
    health = BackendHealth(
        models={"policy": ModelHealth(replicas=3, details={"alive": True}), "attached": ModelHealth()}
    )
    as_status = health.as_dict()  # what Server.status() carries under "backend"
    replicas = [model_replicas(as_status, m) for m in ("policy", "attached", "unknown")]
    assert replicas == [3, None, None]
    built_in = {"models": {"a": 1, "b": 0}, "scheduler": {"queue_len": 1, "models": {"a": 1}}}
    custom = {"models": {"a": 1}, "scheduler": {"queue_len": 4}}
    assert (queue_depths(built_in), queue_depths(custom)) == ({"a": 1}, {"a": 4})


def test_status_reports_per_robot_and_per_model_figures_that_top_renders(capsys):
    with running_server(models=TEST_MODELS) as (server, endpoint):
        http = HttpEndpoint(server, "127.0.0.1", 0)
        try:
            with (
                Connection(server=endpoint, client_id="arm-7", client_type="pick") as a,
                Connection(server=endpoint, client_id="cam-2") as b,
            ):
                for _ in range(6):
                    assert a.model("noop", latency_budget_ms=5000).request(timeout_ms=5000, x=ZEROS).ok
                with pytest.raises(ModelError):
                    b.model("failing", latency_budget_ms=5000).request(timeout_ms=5000, fail="yes")
                server.metrics.flush()
                status = status_of(http.url)
                assert main(["top", "--server", http.url, "--once"]) == 0
                frame = capsys.readouterr().out
                assert http_get(f"{http.url}/status?window=-1")[0] == 400
        finally:
            http.close()

    arm, cam = status["per_robot"]["arm-7"], status["per_robot"]["cam-2"]
    assert (arm["type"], arm["models"], arm["requests"], arm["last_status"], arm["slo"], arm["answered"]) == (
        "pick",
        ["noop"],
        6,
        "OK",
        1.0,
        6,
    )
    assert arm["rate_hz"] > 0 and 0 < arm["p50_ms"] <= arm["p99_ms"]
    assert (cam["last_status"], cam["slo"], cam["p50_ms"]) == ("MODEL_ERROR", 0.0, None)
    noop = status["per_model"]["noop"]
    assert (noop["queue"], noop["in_flight"], noop["replicas"], noop["max_batch_size"]) == (0, 0, 1, 32)
    assert noop["batch_p50"] >= 1 and noop["inference_p50_ms"] > 0
    assert status["per_model"]["echo"]["batch_p50"] is None  # never used: no figure, not NaN
    assert status["config"]["scheduling"]["strategy"] == "edf"  # the default

    lines = frame.splitlines()
    assert "edf" in lines[1] and "robots 2" in lines[1]
    arm_line = next(line for line in lines if line.startswith("arm-7"))
    assert arm_line.split()[1:2] == ["pick"] and "100.0%" in arm_line and "OK" in arm_line
    cam_line = next(line for line in lines if line.startswith("cam-2"))
    assert "0.0%" in cam_line and "MODEL_ERROR" in cam_line
    assert any(line.startswith("noop") for line in lines) and any(line.startswith("failing") for line in lines)
    assert "\x1b[" not in frame  # no colour codes when the output is not a terminal


def test_top_explains_an_unreachable_server_instead_of_a_traceback(capsys):
    assert main(["top", "--server", f"127.0.0.1:{free_port()}", "--once"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach http://127.0.0.1:" in err and "--metrics-port" in err and "Traceback" not in err


def test_help_lists_every_command_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(c in out for c in ("serve", "demo", "top", "examples:", "kill -HUP"))


# -- reload and logging, against `inferential serve` -------------------------------------------


def _server_yaml(zmq_port: int, http_port: int, scheduling: str, known: str, json_logs: bool = False) -> str:
    return f"""\
transport: {{bind: "tcp://127.0.0.1:{zmq_port}"}}
metrics: {{http_port: {http_port}}}
scheduling: {scheduling}
clients:
  known:
{known}
models:
  - {{name: slow, target: "inferential.models.testing:Sleep", options: {{base_ms: 400}}, max_batch_size: 1}}
logging: {{level: INFO, json: {str(json_logs).lower()}}}
"""


def _serve(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "inferential.cli", "serve", "--config", str(config)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen, log: Path) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
    return log.read_text()


def test_sighup_reloads_strategy_weights_and_priorities_keeping_queued_requests(tmp_path):
    zmq_port, http_port = free_port(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    cfg, log = tmp_path / "server.yaml", tmp_path / "server.log"
    cfg.write_text(
        _server_yaml(
            zmq_port, http_port, "{strategy: deadline_aware, cadence_weight: 45}", "    - {id: r0, priority: 5}"
        )
    )
    proc = _serve(cfg, log)
    try:
        _wait_ready(base, proc, log)
        outcomes: dict[str, str] = {}

        def robot(name: str) -> None:
            with Connection(server=f"tcp://127.0.0.1:{zmq_port}", client_id=name) as conn:
                try:
                    conn.model("slow", latency_budget_ms=5000).request(timeout_ms=15_000, x=ZEROS)
                    outcomes[name] = "OK"
                except Exception as err:
                    outcomes[name] = type(err).__name__

        threads = [threading.Thread(target=robot, args=(f"r{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        eventually(lambda: status_of(base)["pending"] == 4, what="4 requests admitted (1 running, 3 queued)")

        cfg.write_text(
            _server_yaml(
                zmq_port,
                http_port,
                "{strategy: edf, cadence_weight: 10}",
                "    - {id: r0, priority: 0, pin_priority: true}",
            )
        )
        proc.send_signal(signal.SIGHUP)
        status = eventually(
            lambda: (s := status_of(base))["scheduler"]["strategy"] == "edf" and s, what="edf after SIGHUP"
        )
        assert status["config"]["scheduling"]["cadence_weight"] == 10
        assert status["config"]["clients"]["known"] == [
            {
                "id": "r0",
                "model": None,
                "latency_budget_ms": None,
                "priority": 0,
                "pin_priority": True,
                "auth_token": None,
                "curve_public_key": None,
            }
        ]
        for t in threads:
            t.join(15)
        assert outcomes == {f"r{i}": "OK" for i in range(4)}  # queued before the reload, answered after it
        carried = re.search(r"scheduler is now edf \((\d+) requests carried over\)", log.read_text())
        assert carried and int(carried.group(1)) >= 1

        # An invalid file is refused, naming the key; the server keeps its configuration.
        cfg.write_text(
            _server_yaml(zmq_port, http_port, "{strategy: fifo, overflow_policy: sideways}", "    - {id: r0}")
        )
        proc.send_signal(signal.SIGHUP)
        eventually(lambda: "scheduling.overflow_policy" in log.read_text(), what="the refusal in the log")
        cfg.write_text(_server_yaml(zmq_port, http_port, "{strategy: fastest}", "    - {id: r0}"))
        proc.send_signal(signal.SIGHUP)
        eventually(
            lambda: "scheduling.strategy: unknown strategy 'fastest'" in log.read_text(), what="the second refusal"
        )
        status = status_of(base)
        assert status["scheduler"]["strategy"] == "edf" and status["config"]["clients"]["known"][0]["priority"] == 0
        with Connection(server=f"tcp://127.0.0.1:{zmq_port}", client_id="after") as conn:
            assert conn.model("slow", latency_budget_ms=5000).request(timeout_ms=10_000, x=ZEROS).ok
        fams = scrape(base)
        assert samples(fams, "inferential_config_reloads_total") == {
            (("result", "ok"),): 1.0,
            (("result", "refused"),): 2.0,
        }
        assert samples(fams, "inferential_scheduler_info") == {(("strategy", "edf"),): 1.0}
    finally:
        out = _stop(proc, log)
    assert proc.returncode == 0, out
    refusals = [line for line in out.splitlines() if "refused" in line]
    assert len(refusals) == 2 and "keeping the running configuration" in refusals[0]


def _wait_ready(base: str, proc: subprocess.Popen, log: Path) -> None:
    def ready() -> bool:
        try:
            return urllib.request.urlopen(f"{base}/readyz", timeout=1).status == 200
        except OSError:
            return False

    eventually(lambda: proc.poll() is not None or ready(), 30, "server ready")
    assert proc.poll() is None, log.read_text()


def test_json_logging_gives_one_parseable_object_per_line_for_a_served_request(tmp_path):
    zmq_port, http_port = free_port(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    cfg, log = tmp_path / "server.yaml", tmp_path / "server.log"
    cfg.write_text(_server_yaml(zmq_port, http_port, "{strategy: fifo}", "    - {id: json-robot}", json_logs=True))
    proc = _serve(cfg, log)
    try:
        _wait_ready(base, proc, log)
        with Connection(server=f"tcp://127.0.0.1:{zmq_port}", client_id="json-robot", client_type="arm") as conn:
            assert conn.model("slow", latency_budget_ms=5000).request(timeout_ms=10_000, x=ZEROS).ok
    finally:
        out = _stop(proc, log)
    assert proc.returncode == 0, out
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(e) for e in entries)
    assert {"level": "INFO", "logger": "inferential.server", "msg": "robot json-robot connected (arm)"}.items() <= next(
        e for e in entries if "json-robot" in e["msg"]
    ).items()
    assert entries[-1]["msg"] == "stopped"


# -- documentation ------------------------------------------------------------------------


def _schema_keys(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _schema_keys(ann, key + ".")
            continue
        if (
            get_origin(ann) is list
            and get_args(ann)
            and isinstance(get_args(ann)[0], type)
            and issubclass(get_args(ann)[0], BaseModel)
        ):
            yield key, field
            yield from _schema_keys(get_args(ann)[0], key + "[].")
            continue
        yield key, field


def test_configuration_reference_lists_every_key_with_its_default():
    doc = (REPO / "docs" / "configuration.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_.\[\]]+)` \| ([^|]+) \|", doc, re.M))
    keys = dict(_schema_keys(InferentialConfig))
    assert sorted(set(keys) - set(rows)) == [], "keys missing from docs/configuration.md"
    assert sorted(set(rows) - set(keys)) == [], "docs/configuration.md documents keys the schema does not have"
    for key, field in keys.items():
        cell = rows[key].strip()
        if field.is_required():
            assert cell == "required", key
        else:
            assert cell.startswith("`") and cell.endswith("`"), key
            assert yaml.safe_load(cell.strip("`")) == field.get_default(call_default_factory=True), f"default of {key}"
    example = re.search(r"## A complete example\n\n```yaml\n(.*?)```", doc, re.S).group(1)
    InferentialConfig.model_validate(yaml.safe_load(example))


# -- the demo -------------------------------------------------------------------------------


def test_demo_runs_briefly_on_the_local_backend_and_writes_its_report(tmp_path):
    report = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "inferential.cli",
            "demo",
            "--backend",
            "local",
            "--robots",
            "3",
            "--duration",
            "2",
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((report / "demo.json").read_text())
    assert len(data["robots"]) == 3 and data["summary"]["total_ok"] > 0
    assert (report / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<img" in (report / "index.html").read_text()
    assert f"report: {report / 'index.html'}" in proc.stdout
