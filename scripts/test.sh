#!/bin/bash
# Sets everything up (scripts/setup.sh) and runs the whole test suite: ruff (lint and format), mypy --strict on the
# package, then pytest (unit, property, conformance, integration with real KDC / rpcbind / UML) in
# one process; extra arguments go to pytest (e.g. -k gss, a path). The JUnit report is
# runs/junit.xml. Fails when any step fails, and when pytest ran no test at all (its exit code 5).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh || { echo "test: setup failed" >&2; exit 1; }
PY=.venv/bin/python
echo "== ruff"; .venv/bin/ruff check rpclatch tests interop benchmarks || exit 1
echo "== ruff format --check"
.venv/bin/ruff format --check rpclatch tests interop benchmarks \
    || { echo "test: run .venv/bin/ruff format rpclatch tests interop benchmarks" >&2; exit 1; }
echo "== mypy --strict rpclatch"; .venv/bin/mypy rpclatch || exit 1
echo "== pytest"
mkdir -p runs
"$PY" -m pytest -p no:cacheprovider --junitxml=runs/junit.xml "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "test: pytest collected no tests; that is a failure" >&2; exit 1; fi
exit $rc
