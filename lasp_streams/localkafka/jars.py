"""The Kafka broker's jars: fetched once from Maven Central with Maven, then reused offline.

Cache layout (``cache_dir`` is :func:`~lasp_streams.localkafka.config.default_cache_dir`)::

    <cache_dir>/m2/repository/          Maven's local repository (never ~/.m2)
    <cache_dir>/kafka-<version>/
        pom.xml                         generated from the packaged template
        maven.log                       Maven's full output of the last fetch
        jars/                           the runtime closure, the classpath of the broker
        manifest.json                   written last: name, size and sha256 of every jar

A fetch is complete exactly when ``manifest.json`` exists and matches ``jars/``. Anything else
(``jars/`` without manifest, a missing, extra, truncated or altered jar) is a half-downloaded
cache: :func:`verify_jars` refuses it and :func:`ensure_jars` fetches again. A verified cache
never runs Maven, so a second start works without network.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Final

from lasp_streams.errors import KafkaSetupError
from lasp_streams.localkafka.config import (
    CACHE_ENV,
    DEFAULT_VERSION,
    SCALA_VERSION,
    default_cache_dir,
)
from lasp_streams.localkafka.java import find_java

log = logging.getLogger("lasp_streams.localkafka.jars")

#: The log4j2 release Kafka 4.4.0 itself depends on (log4j-api); the backend must match it.
LOG4J_VERSION: Final = "2.25.5"
#: Pinned so the fetch does not depend on which plugin version the local Maven defaults to.
DEPENDENCY_PLUGIN: Final = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
MANIFEST_FORMAT: Final = 1
FETCH_TIMEOUT_S: Final = 900.0

_NETWORK_MARKERS: Final = (
    "UnknownHostException",
    "Unknown host",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "No route to host",
    "Connection refused",
    "Connection reset",
    "connect timed out",
    "Connect to repo",
    "Could not transfer artifact",
    "transfer failed",
)
_NOT_FOUND_MARKERS: Final = ("Could not find artifact", "was not found in")


def version_dir(version: str = DEFAULT_VERSION, cache_dir: Path | None = None) -> Path:
    """The cache directory of one Kafka version."""
    return (cache_dir or default_cache_dir()) / f"kafka-{version}"


def jars_dir(version: str = DEFAULT_VERSION, cache_dir: Path | None = None) -> Path:
    """Where the jars of ``version`` live once fetched (the broker's classpath directory)."""
    return version_dir(version, cache_dir) / "jars"


def _manifest_path(version: str, cache_dir: Path | None) -> Path:
    return version_dir(version, cache_dir) / "manifest.json"


def _wipe_command(version: str, cache_dir: Path | None) -> str:
    return f"rm -rf '{version_dir(version, cache_dir)}'"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(directory: Path, version: str) -> dict[str, object]:
    """Name, size and sha256 of every jar in ``directory``."""
    jars = {
        jar.name: {"size": jar.stat().st_size, "sha256": _sha256(jar)}
        for jar in sorted(directory.glob("*.jar"))
    }
    return {
        "format": MANIFEST_FORMAT,
        "kafka_version": version,
        "scala_version": SCALA_VERSION,
        "log4j_version": LOG4J_VERSION,
        "jars": jars,
    }


def cache_problem(version: str = DEFAULT_VERSION, cache_dir: Path | None = None) -> str | None:
    """Why the cache of ``version`` is not usable, or None when it is complete and intact.

    Never touches the network. "not fetched" means nothing was ever downloaded; every other
    answer describes a half-downloaded or altered cache.
    """
    manifest_path = _manifest_path(version, cache_dir)
    directory = jars_dir(version, cache_dir)
    if not manifest_path.exists():
        if directory.exists() or (directory.parent / "jars.partial").exists():
            return f"{directory} has no manifest.json (an earlier fetch did not finish)"
        return "not fetched"
    try:
        manifest = json.loads(manifest_path.read_text())
        expected: dict[str, dict[str, object]] = manifest["jars"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(expected, dict):
            return f"{manifest_path} has an unknown format"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{manifest_path} is unreadable ({exc})"
    if not directory.is_dir():
        return f"{directory} is missing although {manifest_path} exists"
    present = {jar.name: jar for jar in directory.glob("*.jar")}
    missing = sorted(set(expected) - set(present))
    if missing:
        return f"{len(missing)} jar(s) missing from {directory}, e.g. {missing[0]}"
    extra = sorted(set(present) - set(expected))
    if extra:
        return f"{directory} holds jar(s) not in the manifest, e.g. {extra[0]}"
    for name, meta in expected.items():
        jar = present[name]
        if jar.stat().st_size != meta.get("size"):
            return f"{jar} has {jar.stat().st_size} bytes, the manifest says {meta.get('size')}"
        if _sha256(jar) != meta.get("sha256"):
            return f"{jar} does not match its sha256 in the manifest"
    return None


def verify_jars(version: str = DEFAULT_VERSION, cache_dir: Path | None = None) -> Path:
    """The jar directory of ``version`` if the cache is complete; never touches the network.

    Raises KafkaSetupError when the jars were never fetched or the cache is half-downloaded.
    """
    problem = cache_problem(version, cache_dir)
    if problem is None:
        return jars_dir(version, cache_dir)
    if problem == "not fetched":
        raise KafkaSetupError(
            f"the Kafka {version} jars are not in the cache {version_dir(version, cache_dir)}; "
            f"fetch them with `lasp-streams kafka fetch --version {version}` (needs Maven and "
            "network access to Maven Central, once)"
        )
    raise KafkaSetupError(
        f"the Kafka jar cache is half-downloaded or corrupt: {problem}. Fix: run "
        f"`lasp-streams kafka fetch --force --version {version}`, or wipe it with "
        f"`{_wipe_command(version, cache_dir)}` and fetch again"
    )


def ensure_jars(
    version: str = DEFAULT_VERSION, cache_dir: Path | None = None, *, force: bool = False
) -> Path:
    """The jar directory of ``version``, fetching it with Maven only when it is not cached.

    A half-downloaded cache is reported (a warning naming the problem) and fetched again.
    ``force`` re-fetches even a complete cache.
    """
    with _cache_lock(version, cache_dir):
        problem = None if force else cache_problem(version, cache_dir)
        if not force and problem is None:
            log.debug("Kafka %s jars verified in %s", version, jars_dir(version, cache_dir))
            return jars_dir(version, cache_dir)
        if problem not in (None, "not fetched"):
            log.warning("Kafka jar cache is half-downloaded (%s); fetching it again", problem)
        _fetch(version, cache_dir)
        return jars_dir(version, cache_dir)


@contextlib.contextmanager
def _cache_lock(version: str, cache_dir: Path | None) -> Iterator[None]:
    """Serialise fetches of one version between processes (CI and a test run, say)."""
    root = cache_dir or default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"kafka-{version}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def render_pom(version: str) -> str:
    """The pom.xml that lists the broker, its runtime closure and the logging backend."""
    template = resources.files("lasp_streams.localkafka").joinpath("pom.xml").read_text()
    return (
        template.replace("@KAFKA_VERSION@", version)
        .replace("@SCALA_VERSION@", SCALA_VERSION)
        .replace("@LOG4J_VERSION@", LOG4J_VERSION)
    )


def _require_maven(cache_root: Path) -> str:
    found = shutil.which("mvn")
    if found is None:
        raise KafkaSetupError(
            "Maven is missing: `mvn` is not on PATH, and it is needed once to fetch the Kafka "
            "jars. Install it (Debian/Ubuntu: `apt-get install maven`; macOS: "
            "`brew install maven`), or copy a filled cache from another machine into "
            f"{cache_root} (set {CACHE_ENV} to use another place)"
        )
    return found


def _fetch(version: str, cache_dir: Path | None) -> None:
    root = cache_dir or default_cache_dir()
    mvn = _require_maven(root)
    find_java()  # Maven itself runs on Java; say so plainly instead of Maven's JAVA_HOME error.
    vdir = version_dir(version, cache_dir)
    vdir.mkdir(parents=True, exist_ok=True)
    partial = vdir / "jars.partial"
    shutil.rmtree(partial, ignore_errors=True)
    pom = vdir / "pom.xml"
    pom.write_text(render_pom(version))
    maven_log = vdir / "maven.log"
    command = [
        mvn,
        "-B",
        "-U",
        "-f",
        str(pom),
        f"-Dmaven.repo.local={root / 'm2' / 'repository'}",
        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={partial}",
    ]
    log.info(
        "fetching Apache Kafka %s (Scala %s) and its runtime jars from Maven Central into %s "
        "(about 45 MB, first run only; Maven's output goes to %s)",
        version,
        SCALA_VERSION,
        vdir,
        maven_log,
    )
    started = time.monotonic()
    returncode = _run_maven(command, maven_log)
    if returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise _maven_failure(version, maven_log, returncode)
    main_jar = partial / f"kafka_{SCALA_VERSION}-{version}.jar"
    if not main_jar.exists():
        raise KafkaSetupError(
            f"Maven finished but {main_jar.name} is not among the fetched jars in {partial}; "
            f"see {maven_log}"
        )
    manifest = build_manifest(partial, version)
    # Order matters: the manifest is the completion marker, so it goes last.
    _manifest_path(version, cache_dir).unlink(missing_ok=True)
    final = jars_dir(version, cache_dir)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    tmp = vdir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    tmp.rename(_manifest_path(version, cache_dir))
    jars = manifest["jars"]
    assert isinstance(jars, dict)
    total = sum(int(meta["size"]) for meta in jars.values())
    log.info(
        "fetched %d jars (%.1f MB) for Kafka %s in %.0f s",
        len(jars),
        total / 1e6,
        version,
        time.monotonic() - started,
    )


def _run_maven(command: list[str], maven_log: Path) -> int:
    """Run Maven, copying its output to ``maven_log`` and logging progress every few files."""
    downloaded = 0
    try:
        with maven_log.open("w") as sink:
            sink.write("$ " + " ".join(command) + "\n")
            with subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
            ) as process:
                assert process.stdout is not None
                deadline = time.monotonic() + FETCH_TIMEOUT_S
                for line in process.stdout:
                    sink.write(line)
                    if "Downloaded from" in line:
                        downloaded += 1
                        if downloaded % 50 == 0:
                            log.info("... %d files downloaded so far", downloaded)
                    if time.monotonic() > deadline:
                        sink.write(f"lasp-streams: gave up after {FETCH_TIMEOUT_S:.0f} s\n")
                        process.kill()
                        break
                return process.wait()
    except OSError as exc:
        raise KafkaSetupError(f"cannot run Maven ({command[0]}): {exc}") from exc


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _maven_failure(version: str, maven_log: Path, returncode: int) -> KafkaSetupError:
    text = maven_log.read_text(errors="replace") if maven_log.exists() else ""
    boilerplate = ("re-run Maven", "Re-run Maven", "For more information", "[ERROR] [Help")
    errors = "\n".join(
        line
        for line in text.splitlines()
        if line.startswith("[ERROR] ")
        and line.strip() != "[ERROR]"
        and not any(phrase in line for phrase in boilerplate)
    )
    tail = errors or _tail(maven_log, 15)
    if any(marker in text for marker in _NETWORK_MARKERS):
        cause = (
            "no network access to Maven Central (https://repo.maven.apache.org). Fix: connect "
            "to the internet or configure Maven's proxy/mirror in ~/.m2/settings.xml, then run "
            "`lasp-streams kafka fetch` again"
        )
    elif any(marker in text for marker in _NOT_FOUND_MARKERS):
        cause = (
            f"Kafka {version} (or one of its dependencies) is not on Maven Central. Fix: pick a "
            "released version with --version"
        )
    else:
        cause = f"Maven exited with status {returncode}. Fix: read {maven_log}"
    return KafkaSetupError(
        f"fetching the Kafka {version} jars failed: {cause}.\nMaven said:\n{tail}"
    )
