#!/usr/bin/env bash
# Thin wrapper: `ops/kafka.sh start|stop|status|logs|fetch [options]` runs
# `lasp-streams kafka ...` (the logic lives in lasp_streams.localkafka). It prefers the
# repository's .venv, then whatever `lasp-streams` is on PATH.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$repo/.venv/bin/lasp-streams" ]]; then
    exec "$repo/.venv/bin/lasp-streams" kafka "$@"
elif command -v lasp-streams >/dev/null 2>&1; then
    exec lasp-streams kafka "$@"
else
    echo "ops/kafka.sh: lasp-streams is not installed; run: python3 -m venv .venv &&" \
        ".venv/bin/pip install -e '.[dev]'" >&2
    exit 2
fi
