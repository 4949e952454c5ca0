"""intentrec: a sequence-aware two-tower recommender for e-commerce personalization.

Its parts are the subpackages `intentrec.data`, `intentrec.models`, `intentrec.training` and
`intentrec.serving` (the folders `data/`, `models/`, `training/` and `serving/` of the repository) and
the configs `intentrec.conf` (`conf/`). Installed, they live under this package; in a checkout, this
package reads them from the checkout's folders, so `python -m data.prepare` and
`python -m intentrec.data.prepare` run the same code. The command line is `intentrec` (intentrec.cli).
"""

import sys
from pathlib import Path

if sys.version_info < (3, 11):  # noqa: UP036  (a clear message on an older interpreter)
    raise SystemExit(
        f"intentrec needs Python 3.11 or newer; this is Python {sys.version.split()[0]} ({sys.executable}). "
        "Create the environment with python3.11 (./scripts/test.sh does)."
    )

_here = Path(__file__).resolve().parent
if not (_here / "data").is_dir() and (_here.parent / "data" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # a checkout: intentrec.data is <checkout>/data, ...
