"""A real Prometheus server on loopback, run from the distribution's ``prometheus`` binary.

::

    from lasp_streams.localprom import LocalPrometheus

    with LocalPrometheus(targets=["127.0.0.1:9400"], scrape_interval="1s") as prom:
        print(prom.url)                                   # http://127.0.0.1:<port>
        prom.query("sum(lasp_records_applied_total)")     # [Sample(labels={}, value=...)]

Tests and users share this code (``python -m lasp_streams.localprom --help`` runs one in the
foreground). It writes a scrape config for the given targets (or uses a config file you give),
keeps the TSDB in a temporary directory (or the ``data_dir`` you give), listens on
``127.0.0.1`` only, waits for ``/-/ready`` and stops the process with SIGTERM (SIGKILL after a
timeout). It never touches the system service the Debian package installs: that one reads
``/etc/prometheus`` and listens on every interface; ours is a child process of the caller.

The binary comes from the OS (``apt-get install prometheus`` on Debian and Ubuntu; promtool is
in the same package). Every failure to start raises :class:`PrometheusSetupError` naming the
cause and the fix; a PromQL expression Prometheus refuses raises :class:`PromQLError`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from lasp_streams.errors import LaspError

__all__ = [
    "DEFAULT_JOB",
    "LocalPrometheus",
    "PromQLError",
    "PrometheusSetupError",
    "Sample",
    "find_binary",
    "main",
    "promtool",
    "scrape_config",
]

log = logging.getLogger(__name__)

DEFAULT_JOB: Final = "lasp-streams-workers"
DEFAULT_START_TIMEOUT_S: Final = 30.0
DEFAULT_STOP_TIMEOUT_S: Final = 10.0
_INSTALL_HINT: Final = (
    "install it with `sudo apt-get install --no-install-recommends prometheus` (Debian/Ubuntu; "
    "ops/install-system-deps.sh does this), or put a Prometheus 2.x release's binaries on PATH"
)
_PORT_ATTEMPTS: Final = 3
_POLL_S: Final = 0.1


class PrometheusSetupError(LaspError, RuntimeError):
    """The local Prometheus cannot be found, configured, started or reached; the message names
    the cause and the fix."""


class PromQLError(LaspError, ValueError):
    """Prometheus refused a query (bad PromQL, or a query it could not run)."""


@dataclass(frozen=True)
class Sample:
    """One series of an instant-query result: its labels (``__name__`` included when
    Prometheus keeps it) and its value."""

    labels: dict[str, str]
    value: float


def find_binary(name: str = "prometheus") -> str:
    """The path of ``prometheus`` or ``promtool`` on PATH, or a PrometheusSetupError saying how
    to install it."""
    found = shutil.which(name)
    if found is None:
        raise PrometheusSetupError(f"the `{name}` binary is not on PATH; {_INSTALL_HINT}")
    return found


def promtool(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``promtool`` (e.g. ``promtool("check", "rules", "ops/prometheus/alerts.yml")``) and
    return its result; the caller reads ``returncode`` and ``stdout``/``stderr``."""
    return subprocess.run(
        [find_binary("promtool"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def scrape_config(
    targets: Sequence[str],
    *,
    scrape_interval: str = "5s",
    job: str = DEFAULT_JOB,
    rule_files: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """A Prometheus config scraping ``targets`` (``host:port`` each) at ``/metrics``.

    Rules are evaluated as often as targets are scraped, so an alert over a counter can fire
    one scrape after the counter moves.
    """
    if not targets:
        raise PrometheusSetupError("no scrape targets given; pass at least one host:port")
    for target in targets:
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise PrometheusSetupError(
                f"scrape target {target!r} is not host:port (e.g. 127.0.0.1:9400)"
            )
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
    }
    if rule_files:
        config["rule_files"] = [str(Path(path).resolve()) for path in rule_files]
    return config


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class LocalPrometheus:
    """One Prometheus server, a child process of this one, listening on ``host:port``.

    Give either ``targets`` (a config is generated, see :func:`scrape_config`) or
    ``config_file`` (used as is, e.g. ``ops/prometheus/prometheus.yml``). ``port=None`` (or 0)
    picks a free port (and another one if a different process takes it first).
    ``data_dir=None`` keeps the TSDB, config and log in a temporary directory that
    :meth:`stop` removes.
    """

    def __init__(
        self,
        targets: Sequence[str] = (),
        *,
        config_file: Path | str | None = None,
        scrape_interval: str = "1s",
        rule_files: Sequence[str | Path] = (),
        job: str = DEFAULT_JOB,
        host: str = "127.0.0.1",
        port: int | None = None,
        data_dir: Path | str | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT_S,
    ) -> None:
        if bool(targets) == (config_file is not None):
            raise PrometheusSetupError("give either scrape targets or a config file, not both")
        self._config: dict[str, Any] | None = None
        if targets:
            self._config = scrape_config(
                targets, scrape_interval=scrape_interval, job=job, rule_files=rule_files
            )
        self.config_file = Path(config_file).resolve() if config_file is not None else None
        self.host = host
        self.port = port or None
        self._fixed_port = bool(port)
        self._data_dir = Path(data_dir).expanduser().resolve() if data_dir is not None else None
        self._temp_dir: Path | None = None
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    # -- where things are --------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The server's base URL (web UI and ``/api/v1``)."""
        if self.port is None:
            raise PrometheusSetupError("Prometheus has no port yet; call start() first")
        return f"http://{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        """Where the TSDB, the generated config and ``prometheus.log`` live (a temporary
        directory exists only between start and stop)."""
        if self._data_dir is not None:
            return self._data_dir
        if self._temp_dir is None:
            raise PrometheusSetupError(
                "this Prometheus keeps its data in a temporary directory, which exists only "
                "while it runs; call start() first (or pass data_dir=)"
            )
        return self._temp_dir

    @property
    def log_path(self) -> Path:
        """Prometheus's own log (its stdout and stderr)."""
        return self.data_dir / "prometheus.log"

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the server and return once ``/-/ready`` answers 200."""
        if self.pid is not None:
            return
        binary = find_binary()
        if self._data_dir is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="lasp-prometheus-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            config = self._config_path()
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                if not self._fixed_port:
                    self.port = _free_port(self.host)
                try:
                    self._launch(binary, config)
                    return
                except _PortTaken:
                    if self._fixed_port or attempt == _PORT_ATTEMPTS:
                        raise PrometheusSetupError(
                            f"Prometheus cannot listen on {self.host}:{self.port}: the port is "
                            f"in use. Stop the other process (`ss -ltnp 'sport = :{self.port}'` "
                            "names it) or choose another port"
                        ) from None
                    log.info("port %s:%s was taken; trying another", self.host, self.port)
        except BaseException:
            self.stop()  # no process left behind, no temporary directory either
            raise

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait up to ``timeout`` s for a clean exit, then SIGKILL; remove the
        temporary data directory. Safe to call when not running."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "Prometheus (pid %d) ignored SIGTERM for %.0f s; killing it",
                    process.pid,
                    timeout,
                )
                process.kill()
                process.wait(10)
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def __enter__(self) -> LocalPrometheus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _config_path(self) -> Path:
        if self.config_file is not None:
            if not self.config_file.is_file():
                raise PrometheusSetupError(f"Prometheus config file {self.config_file} not found")
            return self.config_file
        path = self.data_dir / "prometheus.yml"
        # JSON is YAML: no YAML library needed to write Prometheus's config.
        path.write_text(json.dumps(self._config, indent=2) + "\n")
        return path

    def _launch(self, binary: str, config: Path) -> None:
        command = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
            f"--web.listen-address={self.host}:{self.port}",
        ]
        log.info("starting Prometheus: %s", " ".join(command))
        with self.log_path.open("wb") as out:  # a fresh log per launch: diagnosed below
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self._process.poll()
            if code is not None:
                self._process = None
                text = self.tail_log()
                if "address already in use" in text:
                    raise _PortTaken
                raise PrometheusSetupError(
                    f"Prometheus exited with code {code} while starting ({_diagnose(text)}).\n"
                    f"--- {self.log_path} (last lines) ---\n{text}"
                )
            if self.ready():
                log.info("Prometheus ready at %s (pid %d)", self.url, self._process.pid)
                return
            if time.monotonic() > deadline:
                text, where = self.tail_log(), self.log_path
                self.stop()
                raise PrometheusSetupError(
                    f"Prometheus at {self.url} was not ready within {self.start_timeout:.0f} s."
                    f"\n--- {where} (last lines) ---\n{text}"
                )
            time.sleep(_POLL_S)

    def tail_log(self, lines: int = 20) -> str:
        """The last ``lines`` lines of Prometheus's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- HTTP API ----------------------------------------------------------------------------
    def ready(self) -> bool:
        """True when ``/-/ready`` answers 200 (config loaded, TSDB open)."""
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``; PromQLError if Prometheus refuses."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10.0) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            # 400/422/503 carry {"status": "error", "errorType": ..., "error": ...}.
            try:
                detail = json.load(exc)
            except ValueError:
                detail = {"error": exc.reason}
            raise PromQLError(
                f"Prometheus refused {path} {params}: {detail.get('errorType', exc.code)}: "
                f"{detail.get('error')}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise PrometheusSetupError(
                f"Prometheus at {self.url} does not answer ({exc}); is it running?"
            ) from exc
        if body.get("status") != "success":
            raise PromQLError(f"Prometheus answered {path} {params} with {body}")
        return body["data"]

    def query(self, expr: str) -> list[Sample]:
        """Evaluate ``expr`` now; a scalar result comes back as one sample without labels."""
        data = self.api("query", query=expr)
        kind, result = data["resultType"], data["result"]
        if kind == "vector":
            return [Sample(dict(item["metric"]), float(item["value"][1])) for item in result]
        if kind == "scalar":
            return [Sample({}, float(result[1]))]
        raise PromQLError(f"query {expr!r} returned a {kind}, not an instant vector or scalar")

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets, each with ``scrapeUrl``, ``health`` and ``lastError``."""
        active: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return active


class _PortTaken(Exception):
    """Internal: the listen port was taken between choosing it and Prometheus binding it."""


def _diagnose(log_text: str) -> str:
    if "error loading config" in log_text or "parsing YAML" in log_text:
        return "the config file is invalid; `promtool check config <file>` explains why"
    if "permission denied" in log_text:
        return "the data directory is not writable; choose another data dir"
    if "lock DB directory" in log_text or "resource temporarily unavailable" in log_text:
        return "another Prometheus uses this data directory; stop it or choose another data dir"
    return "see the log lines below"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lasp_streams.localprom``: run Prometheus on loopback until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m lasp_streams.localprom",
        description="Run Prometheus on 127.0.0.1 scraping lasp_streams workers, until Ctrl-C.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--config",
        type=Path,
        help="a Prometheus config file (default: ops/prometheus/prometheus.yml if it exists)",
    )
    source.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="scrape this worker's metrics endpoint (repeatable); a config is generated",
    )
    parser.add_argument("--scrape-interval", default="5s", help="with --target (default 5s)")
    parser.add_argument(
        "--port", type=int, default=9090, help="listen port (default 9090; 0: any free port)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="keep the TSDB here (default: a temporary dir, removed)"
    )
    args = parser.parse_args(argv)
    config: Path | None = args.config
    if not args.target and config is None:
        config = Path("ops/prometheus/prometheus.yml")
        if not config.is_file():
            parser.error("give --config FILE or --target HOST:PORT")
    prom = LocalPrometheus(
        args.target,
        config_file=config if not args.target else None,
        scrape_interval=args.scrape_interval,
        port=args.port,
        data_dir=args.data_dir,
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # A SIGTERM (a service manager, `kill`) must stop our child too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        prom.start()
    except PrometheusSetupError as exc:
        print(f"error: {exc}")
        return 1
    print(f"Prometheus {prom.url} (pid {prom.pid}, data {prom.data_dir}); Ctrl-C stops it")
    try:
        while prom.pid is not None:
            time.sleep(1.0)
        print(f"Prometheus exited:\n{prom.tail_log()}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        with contextlib.suppress(PrometheusSetupError):
            prom.stop()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
