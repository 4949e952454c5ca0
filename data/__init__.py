"""Data: canonical schema, loaders for public formats, the synthetic shop, and `python -m data.prepare`."""

from pathlib import Path

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]

# `${repo_root:}` in configs: defaults such as `artifacts/` and `../shared/data` are anchored to the
# repository, so a stage gives the same result whatever the current directory is.
OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)
# `${dataset_name:${data_dir},${data.name}}`: a run's folder is named after the prepared folder it trains on.
OmegaConf.register_new_resolver(
    "dataset_name", lambda data_dir, name: Path(str(data_dir)).name if data_dir else name, replace=True
)
