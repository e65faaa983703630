"""Flink 2.2 session cluster from the apache-flink wheel: one JobManager and one TaskManager.

The wheel's pyflink/ directory is a Flink distribution (bin/, lib/, conf/). We run both daemons'
JVMs directly, with the command line the distribution's scripts build (its classpath order, its
JVM options, the memory flags of Flink's own memory model computed once per config change), so
the pid we record is the JVM's and a start skips the scripts' extra JVM launches. Configuration
lives in .stack/flink/conf (FLINK_CONF_DIR); the wheel's directory is never written to. Jobs are submitted
to the REST port like to any remote cluster (flink_jobs/); the Kafka connector they ship with
`pipeline.jars` comes from Maven Central (stack/maven/flink.pom.xml).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway import endpoints
from stack import artifacts, process
from stack.config import StackSettings
from stack.errors import StackError
from stack.process import ProcessSpec
from stack.service import NotReady, Service, http_ready
from stack.services import prometheus

log = logging.getLogger(__name__)

NAME = "flink"
CONNECTOR_PREFIX = "flink-sql-connector-kafka-"
# The JobManager coordinates and serves REST: C1 and the serial collector start it with less CPU
# (2 cores are shared with the whole stack). The TaskManager runs the job: G1 and C2, as shipped.
_GC_FLAGS = {
    "jobmanager": ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"],
    "taskmanager": ["-XX:+UseG1GC"],
}
_RESULT_PREFIX = "BASH_JAVA_UTILS_EXEC_RESULT:"
# role -> (main class, BashJavaUtils command computing its memory flags)
_ROLES = {
    "jobmanager": (
        "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint",
        "GET_JM_RESOURCE_PARAMS",
    ),
    "taskmanager": (
        "org.apache.flink.runtime.taskexecutor.TaskManagerRunner",
        "GET_TM_RESOURCE_PARAMS",
    ),
}

_LOG4J = """\
# Written by stack/services/flink.py on every start. Console only: the runner sends each
# process's stdout to .stack/logs/<process>.log.
monitorInterval = 30
rootLogger.level = INFO
rootLogger.appenderRef.console.ref = ConsoleAppender
appender.console.name = ConsoleAppender
appender.console.type = CONSOLE
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yyyy-MM-dd HH:mm:ss,SSS} %-5p %-60c %x - %m%n
logger.pekko.name = org.apache.pekko
logger.pekko.level = WARN
logger.kafka.name = org.apache.kafka
logger.kafka.level = WARN
logger.netty.name = org.jboss.netty.channel.DefaultChannelPipeline
logger.netty.level = OFF
"""


def flink_home() -> Path:
    """The wheel's Flink distribution."""
    import pyflink

    return Path(pyflink.__file__).resolve().parent


def state_dir(settings: StackSettings) -> Path:
    return settings.service_dir(NAME)


def conf_dir(settings: StackSettings) -> Path:
    """FLINK_CONF_DIR of the cluster (a client may use it too: it names the REST address)."""
    return state_dir(settings) / "conf"


def checkpoint_dir(settings: StackSettings) -> Path:
    return state_dir(settings) / "checkpoints"


def savepoint_dir(settings: StackSettings) -> Path:
    return state_dir(settings) / "savepoints"


def rest_url(settings: StackSettings) -> str:
    return f"http://{endpoints.HOST}:{settings.flink_rest_port}"


def kafka_connector_jar(settings: StackSettings) -> Path:
    """The shaded Kafka SQL connector for `pipeline.jars`, fetched into the cache if missing."""
    lib = artifacts.fetch(settings, NAME)
    jars = sorted(lib.glob(f"{CONNECTOR_PREFIX}*.jar"))
    if not jars:
        raise StackError(f"flink: no {CONNECTOR_PREFIX}*.jar in {lib}")
    return jars[-1]


def _tmp_dir(settings: StackSettings, role: str) -> Path:
    return state_dir(settings) / "tmp" / role


def _params_file(settings: StackSettings, role: str) -> Path:
    return conf_dir(settings) / f"{role}-memory.json"


def _memory_params(settings: StackSettings, role: str) -> tuple[list[str], list[str]]:
    """(JVM flags, dynamic properties) computed by install(); empty before the first install,
    which only `iot status`/`down` can see, and they need the pid file, not the command line."""
    try:
        saved = json.loads(_params_file(settings, role).read_text())
    except (OSError, ValueError):
        return [], []
    return list(saved["jvm"]), list(saved["dynamic"])


def _compute_memory_params(settings: StackSettings, config_text: str) -> None:
    """Flink's own memory model (BashJavaUtils, what the scripts run before every start), run
    only when config.yaml changed: two JVM launches saved on every start."""
    digest = hashlib.sha256(config_text.encode()).hexdigest()
    home = flink_home()
    dist = next((home / "lib").glob("flink-dist*.jar"))
    classpath = f"{home / 'bin' / 'bash-java-utils.jar'}:{dist}"
    pending: dict[str, subprocess.Popen[str]] = {}
    for role, (_, command) in _ROLES.items():
        target = _params_file(settings, role)
        with contextlib.suppress(OSError, ValueError, KeyError):
            if json.loads(target.read_text())["config_sha256"] == digest:
                continue
        pending[role] = subprocess.Popen(
            [
                str(settings.java17_home / "bin" / "java"), "-classpath", classpath,
                "org.apache.flink.runtime.util.bash.BashJavaUtils", command,
                "--configDir", str(conf_dir(settings)),
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
    for role, proc in pending.items():
        output, _ = proc.communicate(timeout=120)
        results = [
            line.removeprefix(_RESULT_PREFIX)
            for line in output.splitlines()
            if line.startswith(_RESULT_PREFIX)
        ]
        if proc.returncode != 0 or len(results) < 2:
            tail = "\n".join(output.splitlines()[-20:])
            raise StackError(f"flink: computing the {role} memory flags failed:\n{tail}")
        saved = {"config_sha256": digest, "jvm": results[-2].split(), "dynamic": results[-1].split()}
        _params_file(settings, role).write_text(json.dumps(saved, indent=1) + "\n")


def _classpath() -> str:
    """lib/*.jar with flink-dist last, the order of the distribution's config.sh."""
    jars = sorted(
        (flink_home() / "lib").glob("*.jar"),
        key=lambda jar: (jar.name.startswith("flink-dist"), jar.name),
    )
    return ":".join(str(jar) for jar in jars)


def _daemon_spec(settings: StackSettings, role: str, index: int | None = None) -> ProcessSpec:
    """java directly, as the distribution's scripts would run it (their flags, computed once).
    index: task manager N of several (replicated profile)."""
    main_class, _ = _ROLES[role]
    jvm_args, dynamic_args = _memory_params(settings, role)
    conf = conf_dir(settings)
    instance = role if index is None else f"{role}-{index}"
    name = f"flink-{instance}"
    log_file = settings.log_dir / f"{name}.log"
    # A per-process io.tmp.dirs: also the distinctive text that marks the pid as ours.
    tmp_property = f"io.tmp.dirs={_tmp_dir(settings, instance)}"
    reporter_port = prometheus.flink_reporter_port(role) + (index - 1 if index else 0)
    argv = [
        str(settings.java17_home / "bin" / "java"),
        *jvm_args,
        *_GC_FLAGS[role],
        *_java_opts().split(),
        f"-Dlog.file={log_file}",
        f"-Dlog4j.configurationFile=file:{conf / 'log4j-console.properties'}",
        "-classpath", _classpath(),
        main_class,
        "--configDir", str(conf),
        *dynamic_args,
        # Each daemon's Prometheus reporter on its own fixed port (a range would race).
        "-D", f"metrics.reporter.prom.port={reporter_port}",
        "-D", tmp_property,
    ]
    return ProcessSpec(
        name=name,
        argv=argv,
        run_dir=settings.run_dir,
        log_file=log_file,
        env={
            "JAVA_HOME": str(settings.java17_home), "FLINK_CONF_DIR": str(conf),
            "FLINK_PLUGINS_DIR": str(prometheus.flink_plugins_dir(settings)),
        },
        marker=tmp_property,
    )


def jobmanager_spec(settings: StackSettings) -> ProcessSpec:
    return _daemon_spec(settings, "jobmanager")


def taskmanager_spec(settings: StackSettings, index: int | None = None) -> ProcessSpec:
    """The TaskManager alone: failure tests `process.kill()` and `process.start()` it."""
    return _daemon_spec(settings, "taskmanager", index)


def taskmanager_specs(settings: StackSettings) -> list[ProcessSpec]:
    """Every TaskManager of the profile: one, or replicated_flink_taskmanagers of them."""
    if not settings.replicated:
        return [taskmanager_spec(settings)]
    return [taskmanager_spec(settings, n) for n in range(1, settings.replicated_flink_taskmanagers + 1)]


def taskmanager_count(settings: StackSettings) -> int:
    return settings.replicated_flink_taskmanagers if settings.replicated else 1


def _java_opts() -> str:
    """The wheel's JVM flags (module opens Flink needs on Java 17), kept as the wheel has them."""
    shipped: dict[str, Any] = yaml.safe_load((flink_home() / "conf" / "config.yaml").read_text())
    try:
        return str(shipped["env"]["java"]["opts"]["all"])
    except (KeyError, TypeError) as exc:
        raise StackError("flink: the wheel's conf/config.yaml has no env.java.opts.all") from exc


def _python() -> str:
    return str(Path(sys.prefix) / "bin" / "python3")


def cluster_config(settings: StackSettings) -> dict[str, str]:
    """config.yaml of the session cluster (flat keys; Flink 2.x reads only config.yaml)."""
    host = endpoints.HOST
    return {
        "env.java.opts.all": _java_opts(),
        "jobmanager.rpc.address": host,
        "jobmanager.rpc.port": str(settings.flink_rpc_port),
        "jobmanager.bind-host": host,
        "taskmanager.bind-host": host,
        "taskmanager.host": host,
        "rest.address": host,
        "rest.bind-address": host,
        "rest.port": str(settings.flink_rest_port),
        "jobmanager.memory.process.size": settings.flink_jobmanager_memory,
        "taskmanager.memory.process.size": settings.flink_taskmanager_memory,
        # The job is SQL only (no Python UDF workers) on the heap state backend: managed memory
        # would sit unused, and one local TaskManager needs little network buffer memory.
        "taskmanager.memory.managed.fraction": "0.1",
        "taskmanager.memory.network.min": "64m",
        "taskmanager.memory.network.max": "64m",
        "taskmanager.numberOfTaskSlots": str(settings.flink_task_slots),
        "parallelism.default": "1",
        "execution.checkpointing.dir": checkpoint_dir(settings).as_uri(),
        "execution.checkpointing.savepoint-dir": savepoint_dir(settings).as_uri(),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": "1000000",
        "restart-strategy.fixed-delay.delay": "5 s",
        # A killed TaskManager is noticed in seconds, not after the default 50 s.
        "heartbeat.interval": "2000",
        "heartbeat.timeout": "15000",
        # The TaskManager usually starts before the ResourceManager listens: retry within a
        # second instead of the default 10 s pause after a failed registration.
        "cluster.registration.error-delay": "1000",
        # Operator counts in the web UI (and the benchmark, which times the job by them) are at
        # most a second old instead of ten.
        "metrics.fetcher.update-interval": "1000",
        "cluster.registration.refused-registration-delay": "1000",
        # The venv's interpreter under one stable name, whichever alias started the runner
        # (a changed config.yaml would recompute the memory flags).
        "python.executable": _python(),
        "python.client.executable": _python(),
        **prometheus.flink_reporter_config(),
        **(_replicated_config(settings) if settings.replicated else {}),
    }


def _replicated_config(settings: StackSettings) -> dict[str, str]:
    """Several smaller TaskManagers, the job's subtasks spread over them: one TaskManager's
    loss leaves enough slots on the others to restart the whole job from its checkpoint."""
    return {
        "taskmanager.memory.process.size": settings.replicated_flink_taskmanager_memory,
        "taskmanager.numberOfTaskSlots": str(settings.replicated_flink_task_slots),
        "cluster.evenly-spread-out-slots": "true",
    }


class FlinkService(Service):
    name = NAME
    stage = 0

    def install(self) -> None:
        kafka_connector_jar(self.settings)
        prometheus.link_flink_reporter(self.settings)
        conf = conf_dir(self.settings)
        conf.mkdir(parents=True, exist_ok=True)
        tm_dirs = [_tmp_dir(self.settings, spec.name.removeprefix("flink-"))
                    for spec in taskmanager_specs(self.settings)]
        for path in (
            checkpoint_dir(self.settings), savepoint_dir(self.settings),
            _tmp_dir(self.settings, "jobmanager"), *tm_dirs,
            state_dir(self.settings) / "log", state_dir(self.settings) / "run",
        ):
            path.mkdir(parents=True, exist_ok=True)
        config = cluster_config(self.settings)
        # JSON strings are valid YAML scalars: no quoting surprises with durations or paths.
        lines = [f"{key}: {json.dumps(value)}" for key, value in config.items()]
        header = "# Written by stack/services/flink.py on every `iot up`; edit that file instead.\n"
        config_text = header + "\n".join(lines) + "\n"
        (conf / "config.yaml").write_text(config_text)
        (conf / "log4j-console.properties").write_text(_LOG4J)
        _compute_memory_params(self.settings, config_text)

    def processes(self) -> list[ProcessSpec]:
        return [jobmanager_spec(self.settings), *taskmanager_specs(self.settings)]

    def start(self) -> None:
        # Ports held by a cluster we did not start: fail now, and clearly. A lone TaskManager
        # (restarted after a failure test) joins our running JobManager as usual.
        if not process.is_running(jobmanager_spec(self.settings)):
            busy = [
                port for port in (self.settings.flink_rest_port, self.settings.flink_rpc_port)
                if process.listening(port)
            ]
            if busy:
                raise StackError(
                    f"flink: port(s) {busy} in use by a process this stack did not start "
                    f"(no pid file under {self.settings.run_dir}); stop it or change the port"
                )
        super().start()

    def _overview(self) -> dict[str, Any]:
        overview: dict[str, Any] = http_ready(f"{rest_url(self.settings)}/overview")
        return overview

    def check_ready(self) -> None:
        overview = self._overview()
        wanted = taskmanager_count(self.settings)
        if overview.get("taskmanagers", 0) < wanted:
            raise NotReady(f"GET /overview: {overview.get('taskmanagers', 0)} of {wanted} task "
                           "manager(s) registered")
        # A free slot is the answer; a cluster whose slots are all taken by running jobs
        # (a second `iot up`) is just as ready.
        if overview.get("slots-available", 0) < 1 and overview.get("jobs-running", 0) < 1:
            raise NotReady("GET /overview: no free task slot")

    def describe(self) -> str:
        try:
            overview = self._overview()
        except NotReady as exc:
            return f"({exc})"
        return (
            f"{rest_url(self.settings)}: {overview.get('jobs-running', 0)} job(s) running, "
            f"{overview.get('slots-available', 0)}/{overview.get('slots-total', 0)} slots free, "
            f"{overview.get('taskmanagers', 0)} task manager(s)"
        )
