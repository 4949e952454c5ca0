"""Where intentrec's files are: the checkout (or the installed package) and its configs.

A checkout holds `pyproject.toml` beside this package; installed, everything (conf/ included) lives
in the `intentrec` package folder.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
CHECKOUT = (_HERE.parent / "pyproject.toml").is_file() and (_HERE.parent / "data" / "__init__.py").is_file()
# The checkout's root, or the installed `intentrec` package folder (which holds conf/).
PACKAGE_ROOT = _HERE.parent if CHECKOUT else _HERE
CONF_DIR = PACKAGE_ROOT / "conf"
# The folder to put on a subprocess's PYTHONPATH so that it imports this intentrec.
IMPORT_ROOT = PACKAGE_ROOT if CHECKOUT else PACKAGE_ROOT.parent
# `${repo_root:}` in configs (intentrec.config): defaults such as `artifacts/` and `../shared/data` are
# anchored to the checkout, so a stage gives the same result whatever the current directory is; an
# installed intentrec anchors them to the current directory.
REPO_ROOT = PACKAGE_ROOT if CHECKOUT else Path.cwd()
