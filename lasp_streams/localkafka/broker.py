"""Start, stop and inspect one local single-node KRaft broker kept in a data directory.

Data directory layout::

    server.properties   rewritten on every start from config.broker_properties
    log4j2.xml          the broker's logging config (logs go to logs/server.log)
    kraft/              the KRaft log directory (formatted once with --standalone)
    format.json         cluster id and controller address the storage was formatted with
    logs/server.log     the broker's own log (log4j2)
    logs/console.log    the JVM's stdout/stderr (crashes before logging starts land here)
    kafka.pid           pid of the running broker; broker.json: its version and address

Only a process whose command line is ``kafka.Kafka`` with *this* data directory's
``server.properties`` counts as our broker: ``stop`` never signals anything else, and a pid
file naming a dead or foreign process is reported as stale and removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final
from xml.sax.saxutils import escape

from lasp_streams.errors import KafkaSetupError
from lasp_streams.localkafka.config import (
    DEFAULT_BROKER_PORT,
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_HEAP,
    DEFAULT_HOST,
    DEFAULT_VERSION,
    broker_properties,
    default_data_dir,
    new_cluster_id,
    render_properties,
)
from lasp_streams.localkafka.jars import ensure_jars, verify_jars
from lasp_streams.localkafka.java import require_java
from lasp_streams.localkafka.probe import answers_metadata

log = logging.getLogger("lasp_streams.localkafka.broker")

DEFAULT_START_TIMEOUT_S: Final = 60.0
DEFAULT_STOP_TIMEOUT_S: Final = 30.0
LOG_TAIL_LINES: Final = 30
_POLL_S: Final = 0.2


@dataclass(frozen=True)
class BrokerStatus:
    """What ``status`` reports about a data directory's broker."""

    running: bool
    version: str
    bootstrap_servers: str
    data_dir: Path
    pid: int | None = None
    #: True when the broker answered a Metadata request just now.
    answering: bool = False
    #: Anything worth telling, e.g. a stale pid file that was cleaned up.
    note: str | None = None

    def describe(self) -> str:
        """A few ``key: value`` lines for humans."""
        if self.running:
            state = "running" if self.answering else "running (not answering metadata requests)"
        else:
            state = "stopped"
        lines = [
            f"state:    {state}",
            f"version:  Apache Kafka {self.version}",
            f"address:  {self.bootstrap_servers}",
            f"pid:      {self.pid if self.pid is not None else '-'}",
            f"data dir: {self.data_dir}",
        ]
        if self.note:
            lines.append(f"note:     {self.note}")
        return "\n".join(lines)


def port_in_use(host: str, port: int) -> bool:
    """True when ``host:port`` cannot be bound, i.e. something already listens there.

    SO_REUSEADDR mirrors what the JVM sets, so a port in TIME_WAIT is not reported as taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def process_cmdline(pid: int) -> str | None:
    """The command line of ``pid`` (arguments joined by spaces), or None if there is none."""
    proc = Path(f"/proc/{pid}/cmdline")
    if proc.parent.exists():
        try:
            raw = proc.read_bytes()
        except OSError:
            return None
        return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip() or None
    if sys.platform == "linux":
        return None
    done = subprocess.run(
        ["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def diagnose(log_text: str, *, host: str, port: int, controller_port: int) -> str:
    """The likely cause of a failed start, read from the broker's log, with its fix."""
    if "Address already in use" in log_text or "BindException" in log_text:
        return (
            f"a port is already in use (broker {host}:{port}, controller {host}:{controller_port})"
            "; stop the other process or choose free ports with --port / --controller-port"
        )
    if "UnsupportedClassVersionError" in log_text:
        return "the Java runtime is too old for Kafka 4; install Java 17 or newer"
    if any(
        marker in log_text
        for marker in (
            "ClassNotFoundException",
            "NoClassDefFoundError",
            "Could not find or load main class",
            "ZipException",
            "invalid LOC header",
        )
    ):
        return "the jar cache is corrupt; run `lasp-streams kafka fetch --force`"
    if "OutOfMemoryError" in log_text or "Could not reserve enough space" in log_text:
        return "the JVM heap is too small or memory is short; change it with --heap (e.g. 1g)"
    if any(
        marker in log_text
        for marker in ("InconsistentClusterIdException", "meta.properties", "not formatted")
    ):
        return (
            "the data directory's storage does not match this broker; use another --data-dir or "
            "delete the data directory (its topics are lost)"
        )
    if "AccessDeniedException" in log_text or "Permission denied" in log_text:
        return "the data directory is not writable; fix its permissions or use another --data-dir"
    return "see the log lines above"


class LocalKafka:
    """One single-node KRaft broker (combined broker and controller) kept in ``data_dir``.

    ``start`` is idempotent (a running broker is reported, not started twice); ``stop`` only
    ends the broker this data directory's pid file names *and* whose command line proves it is
    ours. Every failure raises :class:`~lasp_streams.errors.KafkaSetupError` with the cause and
    the fix, and a failed start leaves no process behind.
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_BROKER_PORT,
        controller_port: int = DEFAULT_CONTROLLER_PORT,
        version: str = DEFAULT_VERSION,
        heap: str = DEFAULT_HEAP,
        cache_dir: Path | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT_S,
    ) -> None:
        if port == controller_port:
            raise KafkaSetupError(
                f"the broker port and the controller port are both {port}; they must differ "
                "(--port and --controller-port)"
            )
        self.data_dir = Path(data_dir or default_data_dir()).expanduser().resolve()
        self.host = host
        self.port = port
        self.controller_port = controller_port
        self.version = version
        self.heap = heap
        self.cache_dir = cache_dir
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._note: str | None = None

    # -- paths -------------------------------------------------------------------------------
    @property
    def properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def log_path(self) -> Path:
        """The broker's own log file (log4j2)."""
        return self.log_dir / "server.log"

    @property
    def console_path(self) -> Path:
        """The JVM's stdout and stderr."""
        return self.log_dir / "console.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "kafka.pid"

    @property
    def _state_path(self) -> Path:
        return self.data_dir / "broker.json"

    @property
    def _format_path(self) -> Path:
        return self.data_dir / "format.json"

    @property
    def _storage_dir(self) -> Path:
        return self.data_dir / "kraft"

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for clients of this broker (as configured, or as running)."""
        state = self._read_state()
        if state is not None and self._live_pid() is not None:
            return f"{state['host']}:{state['port']}"
        return f"{self.host}:{self.port}"

    # -- public operations -------------------------------------------------------------------
    def start(self, *, fetch: bool = True) -> BrokerStatus:
        """Start the broker and wait until it answers Metadata requests.

        ``fetch`` allows downloading missing jars with Maven; with ``fetch=False`` only a
        complete cache is accepted. Returns the status of the running broker (also when it was
        already running).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        running = self._live_pid()
        if running is not None:
            log.info("Kafka is already running (pid %d, %s)", running, self.bootstrap_servers)
            return self.status()
        java = require_java()
        jars = (
            ensure_jars(self.version, self.cache_dir)
            if fetch
            else verify_jars(self.version, self.cache_dir)
        )
        self.check_ports()
        self._write_config()
        self._format_storage(java, jars)
        return self._launch(java, jars)

    def stop(self, *, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> bool:
        """Stop our broker: SIGTERM, wait up to ``timeout`` s for a clean exit, then SIGKILL.

        Returns True if a broker was running and is now stopped, False if none was running.
        """
        pid = self._live_pid()
        if pid is None:
            return False
        log.info("stopping Kafka (pid %d)", pid)
        self._signal(pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout):
            log.warning("Kafka (pid %d) did not exit within %.0f s; killing it", pid, timeout)
            self._signal(pid, signal.SIGKILL)
            if not self._wait_gone(pid, 10.0):
                raise KafkaSetupError(
                    f"Kafka (pid {pid}) survived SIGKILL; check it with `ps -p {pid}`"
                )
        self._forget()
        log.info("Kafka stopped")
        return True

    def status(self) -> BrokerStatus:
        """Running or stopped, version, address, pid and data directory."""
        pid = self._live_pid()
        state = self._read_state() if pid is not None else None
        if state is not None:
            host, port, version = str(state["host"]), int(str(state["port"])), str(state["version"])
        else:
            host, port, version = self.host, self.port, self.version
        return BrokerStatus(
            running=pid is not None,
            version=version,
            bootstrap_servers=f"{host}:{port}",
            data_dir=self.data_dir,
            pid=pid,
            answering=pid is not None and self._answers(host, port, 2.0),
            note=self._note,
        )

    def tail_log(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the broker's log, preceded by any JVM console output."""
        parts = []
        console = _tail(self.console_path, 10)
        if console.strip():
            parts.append(f"--- {self.console_path} (last lines) ---\n{console}")
        server = _tail(self.log_path, lines)
        if server.strip():
            parts.append(f"--- {self.log_path} (last {lines} lines) ---\n{server}")
        return "\n".join(parts) if parts else f"(no broker log yet in {self.log_dir})"

    # -- what kind of node this is (a cluster's nodes, localkafka.cluster, override these) -----
    def _properties(self) -> dict[str, str]:
        """This node's ``server.properties`` settings."""
        return broker_properties(
            self.data_dir, host=self.host, port=self.port, controller_port=self.controller_port
        )

    def _new_cluster_id(self) -> str:
        """The cluster id to format fresh storage with."""
        return new_cluster_id()

    def _quorum_option(self) -> str:
        """How ``StorageTool format`` sets up the controller quorum for this node."""
        return "--standalone"

    def _listening_ports(self) -> list[tuple[str, int, str]]:
        """``(label, port, CLI option)`` of every port this node listens on."""
        return [
            ("broker", self.port, "--port"),
            ("controller", self.controller_port, "--controller-port"),
        ]

    def _answers(self, host: str, port: int, timeout: float) -> bool:
        """Whether the node serves now (a broker: answers a Metadata request)."""
        return answers_metadata(host, port, timeout=timeout)

    # -- pid file ----------------------------------------------------------------------------
    def _owns_cmdline(self, cmdline: str) -> bool:
        return "kafka.Kafka" in cmdline and str(self.properties_path) in cmdline

    def _alive(self, pid: int) -> bool:
        if self._process is not None and self._process.pid == pid:
            return self._process.poll() is None
        with contextlib.suppress(ChildProcessError):
            reaped, _ = os.waitpid(pid, os.WNOHANG)
            if reaped == pid:
                return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not _is_zombie(pid)

    def _live_pid(self) -> int | None:
        """The pid of our running broker; a stale pid file is reported and removed."""
        try:
            text = self.pid_path.read_text().strip()
        except FileNotFoundError:
            return None
        reason: str
        try:
            pid = int(text)
        except ValueError:
            reason = f"it holds {text[:40]!r}, not a pid"
        else:
            cmdline = process_cmdline(pid) if self._alive(pid) else None
            if cmdline is None:
                # Also a process caught mid-exit: it has no command line any more.
                reason = f"process {pid} no longer exists"
            elif not self._owns_cmdline(cmdline):
                reason = f"pid {pid} now belongs to another program ({cmdline[:80]})"
            else:
                return pid
        self._note = f"removed stale pid file {self.pid_path}: {reason}"
        log.warning(
            "stale pid file %s: %s; removed it (no broker is running)", self.pid_path, reason
        )
        self._forget()
        return None

    def _forget(self) -> None:
        """Drop the pid file and state; reap our own child so it is not left a zombie."""
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=10)
                self._process = None
        try:
            self.pid_path.unlink(missing_ok=True)
            self._state_path.unlink(missing_ok=True)
        except OSError as exc:
            raise KafkaSetupError(
                f"cannot remove the pid file {self.pid_path} ({exc}); delete it by hand"
            ) from exc

    def _read_state(self) -> dict[str, object] | None:
        try:
            state = json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None

    # -- start steps -------------------------------------------------------------------------
    def check_ports(self) -> None:
        """Raise KafkaSetupError naming the port and the option to change it if one is taken."""
        for label, port, option in self._listening_ports():
            if port_in_use(self.host, port):
                raise KafkaSetupError(
                    f"the {label} port {self.host}:{port} is already in use by another process. "
                    f"Fix: stop that process (`ss -ltnp 'sport = :{port}'` names it) or choose "
                    f"another port with `lasp-streams kafka start {option} N`"
                )

    def _write_config(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text(render_properties(self._properties()))
        template = resources.files("lasp_streams.localkafka").joinpath("log4j2.xml").read_text()
        log_dir = escape(str(self.log_dir), {'"': "&quot;"})
        (self.data_dir / "log4j2.xml").write_text(template.replace("@LOG_DIR@", log_dir))

    def _java_command(self, java: Path, jars: Path, main: str, *args: str) -> list[str]:
        return [
            str(java),
            f"-Xmx{self.heap}",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.xml'}",
            f"-Dkafka.logs.dir={self.log_dir}",
            "-cp",
            str(jars / "*"),
            main,
            *args,
        ]

    def _format_storage(self, java: Path, jars: Path) -> None:
        if (self._storage_dir / "meta.properties").exists():
            self._check_formatted_for_us()
            return
        cluster_id = self._new_cluster_id()
        command = self._java_command(
            java,
            jars,
            "kafka.tools.StorageTool",
            "format",
            "--config",
            str(self.properties_path),
            f"--cluster-id={cluster_id}",
            self._quorum_option(),
        )
        log.info("formatting KRaft storage in %s (cluster id %s)", self._storage_dir, cluster_id)
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()
            hint = diagnose(
                output, host=self.host, port=self.port, controller_port=self.controller_port
            )
            raise KafkaSetupError(
                f"formatting the KRaft storage in {self._storage_dir} failed "
                f"(exit {done.returncode}). Likely cause: {hint}.\n{output[-3000:]}"
            )
        self._format_path.write_text(
            json.dumps(
                {
                    "cluster_id": cluster_id,
                    "host": self.host,
                    "controller_port": self.controller_port,
                    "version": self.version,
                }
            )
            + "\n"
        )

    def _check_formatted_for_us(self) -> None:
        """The controller's address is stored in the formatted quorum; it cannot change."""
        try:
            formatted = json.loads(self._format_path.read_text())
        except (OSError, ValueError):
            return
        was = (formatted.get("host"), formatted.get("controller_port"))
        if was != (self.host, self.controller_port):
            raise KafkaSetupError(
                f"the data directory {self.data_dir} was formatted for a controller at "
                f"{was[0]}:{was[1]}, not {self.host}:{self.controller_port}. Fix: start with "
                f"`--controller-port {was[1]}`, use another --data-dir, or delete "
                f"{self.data_dir} (its topics are lost)"
            )

    def _launch(self, java: Path, jars: Path) -> BrokerStatus:
        command = self._java_command(java, jars, "kafka.Kafka", str(self.properties_path))
        log.info(
            "starting Kafka %s on %s:%d (controller %d, heap %s, data %s)",
            self.version,
            self.host,
            self.port,
            self.controller_port,
            self.heap,
            self.data_dir,
        )
        started = time.monotonic()
        with self.console_path.open("ab") as console:
            console.write(f"=== lasp-streams start {time.strftime('%FT%T%z')} ===\n".encode())
            console.flush()
            try:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise KafkaSetupError(f"cannot run {java}: {exc}") from exc
        if self._process is not None:
            # An earlier broker of ours that someone else stopped (and reaped): forget it too.
            self._process.poll()
        self._process = process
        self.pid_path.write_text(f"{process.pid}\n")
        self._state_path.write_text(
            json.dumps(
                {
                    "pid": process.pid,
                    "version": self.version,
                    "host": self.host,
                    "port": self.port,
                    "controller_port": self.controller_port,
                    "heap": self.heap,
                }
            )
            + "\n"
        )
        try:
            self._wait_ready(process, started)
        except BaseException:
            # Also on KeyboardInterrupt: never leave a half-started broker behind.
            self._kill_now(process)
            raise
        log.info(
            "Kafka %s is up at %s:%d (pid %d) after %.1f s",
            self.version,
            self.host,
            self.port,
            process.pid,
            time.monotonic() - started,
        )
        return self.status()

    def _wait_ready(self, process: subprocess.Popen[bytes], started: float) -> None:
        deadline = started + self.start_timeout
        while True:
            code = process.poll()
            if code is not None:
                self._fail(f"the broker process exited with status {code}")
            if self._answers(self.host, self.port, 1.0):
                return
            if time.monotonic() > deadline:
                self._fail(
                    f"the broker did not answer a Metadata request within "
                    f"{self.start_timeout:.0f} s",
                    timeout=True,
                )
            time.sleep(_POLL_S)

    def _fail(self, reason: str, *, timeout: bool = False) -> None:
        tail = self.tail_log(LOG_TAIL_LINES)
        hint = diagnose(tail, host=self.host, port=self.port, controller_port=self.controller_port)
        if timeout and hint == "see the log lines above":
            hint = "the machine may be overloaded; allow more time with --timeout"
        raise KafkaSetupError(
            f"Kafka {self.version} did not start: {reason}. Likely cause: {hint}.\n{tail}"
        )

    def _kill_now(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            log.info("killing the half-started broker (pid %d)", process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self._forget()

    def _signal(self, pid: int, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            # The broker leads its own session (start_new_session), so its group is its pid.
            if os.getpgid(pid) == pid:
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL_S)
        return True


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as stream:
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
            stream.seek(max(0, size - 256 * 1024))
            text = stream.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
