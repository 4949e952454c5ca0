"""Data: canonical schema, loaders for public formats, the synthetic shop, and `python -m data.prepare`."""

from pathlib import Path

from omegaconf import OmegaConf

# The checkout's root, or the installed `intentrec` package folder (which holds conf/).
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
CHECKOUT = (PACKAGE_ROOT / "pyproject.toml").is_file()
CONF_DIR = PACKAGE_ROOT / "conf"
# The folder to put on a subprocess's PYTHONPATH so that it imports this intentrec.
IMPORT_ROOT = PACKAGE_ROOT if CHECKOUT else PACKAGE_ROOT.parent
# `${repo_root:}` in configs: defaults such as `artifacts/` and `../shared/data` are anchored to the
# checkout, so a stage gives the same result whatever the current directory is; an installed
# intentrec anchors them to the current directory.
REPO_ROOT = PACKAGE_ROOT if CHECKOUT else Path.cwd()
OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)
# `${dataset_name:${data_dir},${data.name}}`: a run's folder is named after the prepared folder it trains on.
OmegaConf.register_new_resolver(
    "dataset_name", lambda data_dir, name: Path(str(data_dir)).name if data_dir else name, replace=True
)
