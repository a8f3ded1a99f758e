#!/usr/bin/env bash
# The test command, in one place: the README and .ci/run both use this script.
# Needs PostgreSQL at $ROAST_JOBS_TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q "$@"
