"""Our own programs, started by the runner after the infrastructure is ready.

Each is the same program a user runs by hand (`python -m bridge`, ...); the runner only supplies
the environment that points it at the local stack.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from gateway import endpoints, pki
from stack import topology
from stack.config import StackSettings
from stack.errors import StackError
from stack.process import ProcessSpec
from stack.service import NodeService, NotReady, Service, http_ready

# Instance N of a service run several times listens for metrics on its port + 10 * (N - 1).
_INSTANCE_PORT_STEP = 10


def profile_env(settings: StackSettings) -> dict[str, str]:
    """The environment every program of the stack gets: its state dir, its profile, and the
    addresses and credentials of the profile's Kafka and Cassandra (stack/topology.py)."""
    return {
        "IOT_STACK_DIR": str(settings.stack_dir),
        "IOT_PROFILE": str(settings.profile),
        **topology.service_env(settings),
    }


class _PythonService(Service):
    module: str

    def args(self) -> tuple[str, ...]:
        """The program's arguments after `python -m module` (from the stack's settings)."""
        return ()

    def env(self) -> dict[str, str]:
        return {**profile_env(self.settings), "PYTHONUNBUFFERED": "1"}

    def processes(self) -> list[ProcessSpec]:
        argv = [sys.executable, "-m", self.module, *self.args()]
        return [self.spec(self.name, argv, env=self.env())]


class _InstanceService(NodeService, _PythonService):
    """A stateless program the replicated profile runs several times (node 1, 2, ...)."""

    base_port: int

    @property
    def metrics_port(self) -> int:
        return self.base_port + _INSTANCE_PORT_STEP * ((self.node or 1) - 1)


class WriterService(_InstanceService):
    """Migrates the Cassandra schema, then writes Flink's aggregates to Cassandra."""

    name = "writer"
    base_port = endpoints.WRITER_METRICS_PORT
    stage = 1
    module = "storage"

    def __init__(self, settings: StackSettings, node: int | None = None) -> None:
        super().__init__(settings, node)
        if node is not None and node > 1:
            # After the first writer is ready: its migration created the schema alone (two
            # concurrent CREATE TABLEs on different nodes can disagree on the table's id).
            self.stage = 2

    def env(self) -> dict[str, str]:
        extra = {"IOT_WRITER_METRICS_PORT": str(self.metrics_port)} if self.node else {}
        return {**super().env(), **extra}

    def check_ready(self) -> None:
        http_ready(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def describe(self) -> str:
        import time

        from stack.figures import scrape

        m = scrape(self.metrics_port)
        last = m.get('iot_writer_last_window_end_seconds{table="agg_1m"}', 0.0)
        written = time.strftime("%H:%M:%S", time.gmtime(last)) + "Z" if last else "none yet"
        return f"rows written {m.get('iot_writer_rows_total', 0):.0f}, newest 1m window end {written}"


class BridgeService(_InstanceService):
    name = "bridge"
    base_port = endpoints.BRIDGE_METRICS_PORT
    stage = 1
    module = "bridge"

    def env(self) -> dict[str, str]:
        if not self.node:
            return super().env()
        return {
            **super().env(),
            "IOT_BRIDGE_METRICS_PORT": str(self.metrics_port),
            # Its own identity: the broker lets bridge identities share the telemetry group.
            "IOT_BRIDGE_CLIENT_ID": pki.bridge_cn(self.node),
        }

    def start(self) -> None:
        if self.node:
            # After Mosquitto's stage made the CA: the instance's certificate, made if missing.
            pki.bridge_identity(self.settings.pki_dir, self.node)
        super().start()

    def check_ready(self) -> None:
        http_ready(f"http://127.0.0.1:{self.metrics_port}/health")

    def describe(self) -> str:
        from stack.figures import scrape

        m = scrape(self.metrics_port)
        return (f"messages in {m.get('bridge_messages_received_total', 0):.0f}, "
                f"to Kafka {m.get('bridge_messages_produced_total', 0):.0f}, "
                f"DLQ {m.get('bridge_messages_dlq_total', 0):.0f}")


class QueryApiService(_PythonService):
    name = "query-api"
    stage = 2
    module = "query_api"

    def args(self) -> tuple[str, ...]:
        # Worker processes sharing the port (uvicorn's): the replicated profile runs several.
        workers = self.settings.replicated_query_api_workers if self.settings.replicated else 1
        return ("--workers", str(workers)) if workers > 1 else ()

    def check_ready(self) -> None:
        http_ready(f"http://127.0.0.1:{self.settings.query_api_port}/health")


class EmulatorService(_PythonService):
    """The default fleet of docs/contract.md: 50 devices, 1 reading/s each, running until `make down`."""

    name = "emulator"
    stage = 2
    module = "emulator"

    def args(self) -> tuple[str, ...]:
        s = self.settings
        return (
            "--devices", str(s.emulator_devices), "--rate", str(s.emulator_rate),
            "--tenant", s.emulator_tenant, "--duration", "0", "--prefix", "dev",
        )

    def check_ready(self) -> None:
        # The emulator has no port; readiness is its process staying up past provisioning.
        for spec in self.processes():
            from stack import process

            if not process.is_running(spec):
                raise NotReady("emulator process not running")


class FlinkJobService(Service):
    """The aggregation job: submitted to the session cluster, resumed from its newest checkpoint."""

    name = "flink-job"
    stage = 1

    def _env(self) -> dict[str, str]:
        from stack.services.flink import kafka_connector_jar

        return {
            **profile_env(self.settings),
            "IOT_FLINK_CONNECTOR_JAR": str(kafka_connector_jar(self.settings)),
            "IOT_FLINK_CHECKPOINT_DIR": str(self.settings.stack_dir / "flink" / "checkpoints"),
            "IOT_FLINK_REST_URL": f"http://localhost:{self.settings.flink_rest_port}",
            # PyFlink's client starts a JVM of its own: the cluster's Java, not whatever is on PATH.
            "JAVA_HOME": str(self.settings.java17_home),
        }

    def install(self) -> None:
        from stack.services.flink import kafka_connector_jar

        kafka_connector_jar(self.settings)

    def processes(self) -> list[ProcessSpec]:
        return []  # the job runs inside Flink; nothing of ours stays in the background

    @property
    def log_file(self) -> Path:
        return self.settings.log_dir / "flink-job.log"

    def submit_command(self) -> tuple[list[str], dict[str, str]]:
        """(argv, environment) of one submission: resumes the newest checkpoint of the job's
        lineage and does nothing if the job already runs."""
        import os

        return [sys.executable, "-m", "flink_jobs"], {**os.environ, **self._env()}

    @property
    def submit_lock_file(self) -> Path:
        """Held during a submission: `iot up` and the supervisor never submit the job twice (the
        job is not visible to Flink's REST API while a submission plans it)."""
        return self.settings.run_dir / "flink-job.submit.lock"

    def start(self) -> None:
        import fcntl

        argv, env = self.submit_command()
        self.submit_lock_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.submit_lock_file, "w") as lock, open(self.log_file, "ab") as out:
            fcntl.flock(lock, fcntl.LOCK_EX)
            result = subprocess.run(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                timeout=300,
            )
        log_file = self.log_file
        if result.returncode != 0:
            from stack.process import log_tail

            raise StackError(f"flink-job: submission failed; last lines of {log_file}:\n"
                             f"{log_tail(log_file)}")

    def _job(self) -> dict[str, object] | None:
        from flink_jobs.config import FlinkJobSettings
        from flink_jobs.rest import FlinkRest

        rest = FlinkRest(f"http://localhost:{self.settings.flink_rest_port}")
        try:
            return rest.active_job(FlinkJobSettings().job_name)
        except httpx.HTTPError:
            return None
        finally:
            rest.close()

    def check_ready(self) -> None:
        job = self._job()
        if job is None or job.get("state") != "RUNNING":
            raise NotReady(f"Flink job not RUNNING ({job.get('state') if job else 'absent'})")

    def running(self) -> bool:
        return self._job() is not None

    def stop(self) -> bool:
        # Stopping the cluster stops the job; it resumes from its retained checkpoint on `up`.
        return False

    def describe(self) -> str:
        from flink_jobs.config import FlinkJobSettings
        from stack.figures import consumer_lag

        job = self._job()
        if job is None:
            return "no job"
        job_settings = FlinkJobSettings()
        lag = consumer_lag(topology.kafka_client_config(self.settings), job_settings.consumer_group,
                           job_settings.source_topic)
        line = f"job {job['jid']} {job['state']}, consumer lag {lag if lag is not None else '?'}"
        return line + self._duplicates(str(job["jid"]))

    def _duplicates(self, job_id: str) -> str:
        from flink_jobs.rest import FlinkRest

        rest = FlinkRest(f"http://localhost:{self.settings.flink_rest_port}")
        try:
            removed = rest.duplicates_removed(job_id)
        except (httpx.HTTPError, KeyError):
            return ""
        finally:
            rest.close()
        return f", duplicates removed {removed} since the job started" if removed is not None else ""
