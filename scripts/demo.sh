#!/bin/bash
# Sets everything up (scripts/setup.sh: apt packages + .venv) and runs the main job, `rpclatch demo`,
# on its embedded default (a throwaway Kerberos realm + the deterministic simulated network).
# Extra arguments go to `rpclatch demo` (e.g. --json, --scenario 3, --out DIR).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/rpclatch demo "$@"
