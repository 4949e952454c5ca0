#!/usr/bin/env bash
# Set up .venv if needed and run the whole test suite (everything that needs no GPU).
#   ./scripts/test.sh                 # all tests
#   ./scripts/test.sh -k prepare -x   # extra arguments go to pytest
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_services.sh"
python -m pytest "$@"
