"""Learning curves: the monitored validation metric against training epoch and training wall time.

Every training run writes `learning_curve.png` beside `metrics.json` from `info.learning_curve` (one
point per validation: epoch, training seconds so far, e.g. `val/ndcg@10`). `python -m training.compare`
draws one figure per data set with every variant's runs (`learning_curves.png`), and
`scripts/bench_recbole.py` adds RecBole's validation curve where it has one.
"""

from __future__ import annotations

from pathlib import Path


def metric_of(curve: list[dict]) -> str:
    """The metric a curve tracks: its one key besides epoch and train_seconds."""
    keys = {key for point in curve for key in point} - {"epoch", "train_seconds"}
    return sorted(keys)[0] if keys else "val/ndcg@10"


def plot_curves(path: Path, title: str, series: list[tuple[str, list[dict]]]) -> Path:
    """One figure, two panels (metric against epoch; against training seconds), one line per (label, curve).
    Lines of the same label share a colour (seeds of one variant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(label, curve) for label, curve in series if curve]
    labels = list(dict.fromkeys(label for label, _ in series))
    colors = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    metric = metric_of([point for _, curve in series for point in curve])
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    shown = set()
    for label, curve in series:
        values = [point.get(metric) for point in curve]
        epochs = [point["epoch"] + 1 for point in curve]  # epochs completed at that validation
        seconds = [point["train_seconds"] for point in curve]
        legend = label if label not in shown else None
        shown.add(label)
        axes[0].plot(epochs, values, marker="o", markersize=2.5, color=colors[label], label=legend, alpha=0.85)
        axes[1].plot(seconds, values, marker="o", markersize=2.5, color=colors[label], label=legend, alpha=0.85)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("training seconds (validation excluded)")
    for axis in axes:
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_run(path: Path, info: dict) -> Path:
    """A run's own learning curve (`info` as metrics.json records it)."""
    title = f"{info.get('model')} on {info.get('data')}, seed {info.get('seed')}"
    return plot_curves(path, title, [(str(info.get("model")), info.get("learning_curve") or [])])
