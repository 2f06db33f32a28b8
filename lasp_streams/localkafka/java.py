"""Finding a Java runtime that can run Kafka 4 (Java 17 or newer)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Final

from lasp_streams.errors import KafkaSetupError

MIN_JAVA: Final = 17

_INSTALL_HINT: Final = (
    "install a Java 17+ runtime (Debian/Ubuntu: `apt-get install openjdk-17-jre-headless`; "
    "macOS: `brew install openjdk@17`) and put `java` on PATH, or set JAVA_HOME"
)


def find_java() -> Path:
    """The ``java`` executable: ``$JAVA_HOME/bin/java`` if that exists, else ``java`` on PATH.

    Raises KafkaSetupError naming the fix when there is none.
    """
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = Path(home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("java")
    if found is None:
        raise KafkaSetupError(f"no Java runtime: `java` is not on PATH; {_INSTALL_HINT}")
    return Path(found)


def parse_java_major(version_output: str) -> int | None:
    """The major version in ``java -version`` output (``"1.8.0_392"`` is 8, ``"17.0.2"`` is 17)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:
        return int(match.group(2))
    return major


def require_java() -> Path:
    """A ``java`` executable of version 17 or newer, or KafkaSetupError saying what to install."""
    java = find_java()
    try:
        done = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as exc:
        raise KafkaSetupError(f"cannot run {java} -version ({exc}); {_INSTALL_HINT}") from exc
    major = parse_java_major(done.stderr + done.stdout)
    if major is None:
        raise KafkaSetupError(
            f"cannot tell the version of {java} (`java -version` said: "
            f"{(done.stderr or done.stdout).strip()[:200]!r}); {_INSTALL_HINT}"
        )
    if major < MIN_JAVA:
        raise KafkaSetupError(
            f"{java} is Java {major}, but Kafka 4 needs Java {MIN_JAVA} or newer; {_INSTALL_HINT}"
        )
    return java
