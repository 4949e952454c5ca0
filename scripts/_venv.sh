# Sourced by demo.sh and test.sh: create .venv if missing and (re)install when pyproject.toml changed.
# Fast when .venv exists and is current: the install runs only when pyproject.toml's hash differs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)' 2>/dev/null; then
  echo "[setup] intentrec needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=<path to python3.11>." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
STAMP=.venv/.intentrec-installed
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing intentrec and its dependencies into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # The server binary is taken from nvidia-pytriton without its Python package (it pins numpy<2).
  .venv/bin/python -m pip uninstall --quiet --yes nvidia-pytriton >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  echo "$WANT" > "$STAMP"
fi
if [ ! -x .venv/tools/tritonserver/pytriton/tritonserver/bin/tritonserver ] || [ ! -d .venv/tools/tritonserver/python/pandas ]; then
  echo "[setup] fetching the tritonserver binary into .venv/tools/tritonserver"
  .venv/bin/python -m intentrec.serving.tritonserver --force >/dev/null
fi
export PATH="$ROOT/.venv/bin:$PATH"
