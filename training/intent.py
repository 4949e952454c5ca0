"""Intent signals: per-step labels from prepared sequences, probability metrics, calibration, a baseline.

The labels are one rule, used by the intent heads in training and by every evaluation of them. For each
step t of a prepared split, within its session (`new_session` starts one; a row's first step always does):

- `purchase`: the session has an online purchase at a step after t (will this visit end in a sale?);
- `exit`: t is the session's last step (will the shopper leave now?);
- `abandon`: the session ends with items in the web cart (data.features.replay_cart over the session)
  and no purchase after t (is this cart about to be left behind?);
- `next_category`: the category code of the session's next step's item, -1 at its last step.

A data set without purchases has no positive `purchase` or `abandon` label, and one without item
categories no `next_category`: `available_heads` says which heads can learn and why the others cannot.

Metrics for a probability `p` of a binary label: AUC (the Mann-Whitney statistic, ties counted half),
log loss, Brier score and expected calibration error (ECE: equal-width bins, the mean |accuracy -
confidence| weighted by the bins' counts). Calibration on validation: temperature scaling of logits
(one scalar, log loss minimised) or isotonic regression (pool-adjacent-violators). The baseline is a
logistic regression on hand-made session features (`session_features`: steps so far, time in the
session, cart size so far, device, hour band), which the heads must beat.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from intentrec.data.features import replay_cart
from intentrec.data.schema import EVENT_TYPES, enum_code

HEADS = ("purchase", "exit", "abandon", "next_category")
ECE_BINS = 15


def session_starts(split) -> np.ndarray:
    """(S,) bool: the steps that start a session (the `new_session` flags, and every row's first step)."""
    starts = split.steps["new_session"].astype(bool).copy()
    starts[split.offsets[:-1][np.diff(split.offsets) > 0]] = True
    return starts


def intent_labels(split, event_types: list[str], item_category: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per-step labels (see the module's docstring): int8 arrays for the binary heads, int64 categories."""
    starts = session_starts(split)
    session = np.cumsum(starts) - 1  # (S,) session number
    S = len(session)
    kinds = np.asarray(event_types, dtype=object)[split.steps["event_types"].astype(np.int64)]
    last = np.ones(S, bool)
    last[:-1] = session[1:] != session[:-1]
    # purchases after t within the session: the session's running count at its last step minus t's
    bought = np.cumsum(kinds == "purchase")
    after = bought[np.flatnonzero(last)][session] - bought
    labels = {"purchase": (after > 0).astype(np.int8), "exit": last.astype(np.int8)}
    # the cart at the end of each session with an add-to-cart (data.features.replay_cart: the one cart rule)
    items, quantities = split.steps["item_ids"], split.steps.get("quantities")
    ends_with_cart = np.zeros(session[-1] + 1 if S else 0, bool)
    bounds = np.append(np.flatnonzero(starts), S)
    for number in np.unique(session[kinds == "add_to_cart"]):
        steps = range(bounds[number], bounds[number + 1])
        cart, _, _ = replay_cart(
            (int(items[t]), kinds[t], int(quantities[t]) if quantities is not None else 1, t) for t in steps
        )
        ends_with_cart[number] = bool(cart)
    labels["abandon"] = (ends_with_cart[session] & (after == 0)).astype(np.int8)
    if item_category is not None:
        following = np.full(S, -1, np.int64)
        following[:-1] = np.asarray(item_category)[items[1:].astype(np.int64)]
        labels["next_category"] = np.where(last, -1, following)
    return labels


def available_heads(labels: dict[str, np.ndarray]) -> dict[str, str | None]:
    """head -> None when it can learn from these labels, else the reason it cannot."""
    out = {}
    for head in HEADS:
        values = labels.get(head)
        if values is None:
            out[head] = "the items have no categories (items.parquet: category_id)"
        elif head == "next_category":
            out[head] = None if (values >= 0).any() else "no session has a second step"
        elif head in ("purchase", "abandon") and not values.any():
            out[head] = "the data has no purchase events" if head == "purchase" else "no session ends with a cart"
        elif not values.any() or values.all():
            out[head] = f"every step has the same {head} label"
        else:
            out[head] = None
    return out


def session_features(split) -> np.ndarray:
    """(S, 10) features of the baseline: log(1 + steps so far), log(1 + minutes in the session), cart size so far
    (adds minus removes minus purchases, at least 0), device (4 one-hot: unknown, desktop, mobile, tablet),
    hour band (night, morning, afternoon, evening)."""
    starts = session_starts(split)
    session = np.cumsum(starts) - 1
    S = len(session)
    first_of = np.flatnonzero(starts)[session]
    steps_so_far = np.arange(S) - first_of + 1
    gaps = np.maximum(split.steps["time_gaps"].astype(np.float64), 0.0)
    gaps[starts] = 0.0
    elapsed = np.cumsum(gaps)
    elapsed -= elapsed[first_of] - gaps[first_of]
    kinds = split.steps["event_types"].astype(np.int64)
    code = lambda name: enum_code(EVENT_TYPES, name)  # noqa: E731 - prepared codes follow data.schema
    change = np.select([kinds == code("add_to_cart"), kinds == code("remove_from_cart"), kinds == code("purchase")],
                       [1, -1, -1], 0)  # fmt: skip
    running = np.cumsum(change)
    cart = np.maximum(running - (running[first_of] - change[first_of]), 0)
    device = np.eye(4)[np.clip(split.steps["device_types"].astype(np.int64), 0, 3)]
    hours = split.steps["hours"].astype(np.int64) - 1  # prepared hours are 1-based (0 unknown: no band)
    band = np.vstack([np.eye(4), np.zeros(4)])[np.where(hours >= 0, np.clip(hours, 0, 23) // 6, 4)]
    return np.column_stack([np.log1p(steps_so_far), np.log1p(elapsed / 60.0), cart, device, band]).astype(np.float64)


# ----------------------------------------------------------------------------------------------- metrics


def auc(p: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); NaN without both classes."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if not positives or not negatives:
        return float("nan")
    ranks = rankdata(np.asarray(p, np.float64))  # ties share their average rank
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def binary_metrics(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y, np.float64)
    ece = sum(count * abs(observed - predicted) for predicted, observed, count in reliability(p, y, bins)) / len(y)
    return {
        "auc": auc(p, y),
        "log_loss": float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()),
        "brier": float(((p - y) ** 2).mean()),
        "ece": float(ece),
        "positives": float(y.mean()),
        "n": int(len(y)),
    }


def reliability(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> list[tuple[float, float, int]]:
    """(mean predicted, observed rate, count) per non-empty equal-width bin: the reliability diagram's points."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    predicted = np.bincount(which, weights=p, minlength=bins)
    observed = np.bincount(which, weights=y, minlength=bins)
    return [
        (float(predicted[b] / count[b]), float(observed[b] / count[b]), int(count[b])) for b in np.flatnonzero(count)
    ]


# ------------------------------------------------------------------------------------------- calibration


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T in [0.05, 20] minimising the log loss of sigmoid(logits / T) (bounded search on log T)."""
    from scipy.optimize import minimize_scalar

    logits, y = np.asarray(logits, np.float64), np.asarray(y, np.float64)

    def loss(log_t: float) -> float:
        z = logits / np.exp(log_t)
        return float(np.mean(np.logaddexp(0, z) - y * z))

    found = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(found.x))


def fit_isotonic(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic regression of y on p (scipy's pool-adjacent-violators): (thresholds, calibrated values)."""
    from scipy.optimize import isotonic_regression

    order = np.argsort(p, kind="mergesort")
    x = np.asarray(p, np.float64)[order]
    fitted = isotonic_regression(np.asarray(y, np.float64)[order]).x
    first = np.r_[True, np.diff(fitted) != 0]  # each block's first point: its threshold
    return x[first], fitted[first]


def apply_isotonic(model: tuple[np.ndarray, np.ndarray], p: np.ndarray) -> np.ndarray:
    thresholds, values = model
    position = np.searchsorted(thresholds, np.asarray(p, np.float64), side="right") - 1
    return values[np.clip(position, 0, len(values) - 1)]


# ------------------------------------------------------------------------------------------- the baseline


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iterations: int = 200) -> np.ndarray:
    """Weights (bias last) of an L2-regularised logistic regression, by Newton's method on standardised x."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = np.column_stack([(x - mean) / scale, np.ones(len(x))])
    w = np.zeros(z.shape[1])
    y = np.asarray(y, np.float64)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(z @ w)))
        gradient = z.T @ (p - y) / len(y) + l2 * np.r_[w[:-1], 0]
        hessian = (z * (p * (1 - p))[:, None]).T @ z / len(y) + l2 * np.diag(np.r_[np.ones(len(w) - 1), 0])
        step = np.linalg.solve(hessian + 1e-9 * np.eye(len(w)), gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return np.concatenate([w, mean, scale])


def predict_logistic(model: np.ndarray, x: np.ndarray) -> np.ndarray:
    F = x.shape[1]
    w, mean, scale = model[: F + 1], model[F + 1 : 2 * F + 1], model[2 * F + 1 :]
    z = np.column_stack([(x - mean) / scale, np.ones(len(x))])
    return 1 / (1 + np.exp(-(z @ w)))


# ------------------------------------------------------------------------------------ baseline evaluation

DEVICES = ("unknown", "desktop", "mobile", "tablet")
LENGTHS = ((1, 1), (2, 3), (4, 7), (8, 10**9))


def _prepared(data_dir: Path):
    """(vocab event types, item -> category code or None, read_split) of a prepared data folder."""
    import pyarrow.parquet as pq

    from intentrec.errors import DataError
    from intentrec.training.datamodule import read_split

    data_dir = Path(data_dir)
    if not (data_dir / "vocab.json").is_file():
        raise DataError(f"data_dir={data_dir} holds no prepared data (no vocab.json); run python -m data.prepare first")
    vocab = json.loads((data_dir / "vocab.json").read_text())
    items = pq.read_table(data_dir / "items.parquet")
    category = None
    if "category_idx" in items.column_names and pc.max(items["category_idx"]).as_py():
        index = items["item_idx"].to_numpy()
        category = np.zeros(int(index.max()) + 1, np.int64)
        category[index] = items["category_idx"].to_numpy()
    return vocab["event_types"], category, lambda name: read_split(data_dir / f"{name}.parquet")


def _slices(split) -> dict[str, np.ndarray]:
    steps = session_features(split)[:, 0]
    count = np.rint(np.expm1(steps)).astype(int)
    device = np.clip(split.steps["device_types"].astype(int), 0, 3)
    out = {f"device={name}": device == code for code, name in enumerate(DEVICES)}
    for low, high in LENGTHS:
        out[f"steps={low}" + ("" if low == high else f"-{high}" if high < 10**9 else "+")] = (count >= low) & (
            count <= high
        )
    return out


def evaluate_baseline(data_dir: Path) -> dict:
    """The session-feature baseline of every available head, fitted on train, measured on test (with slices)."""
    event_types, category, split_of = _prepared(data_dir)
    train, test = split_of("train"), split_of("test")
    labels_train = intent_labels(train, event_types, category)
    labels_test = intent_labels(test, event_types, category)
    heads = available_heads(labels_train)
    x_train, x_test = session_features(train), session_features(test)
    slices = _slices(test)
    result: dict = {"data_dir": str(data_dir), "heads": {}, "unavailable": {h: r for h, r in heads.items() if r}}
    for head in ("purchase", "exit", "abandon"):
        if heads[head]:
            continue
        model = fit_logistic(x_train, labels_train[head])
        p = predict_logistic(model, x_test)
        y = labels_test[head]
        result["heads"][head] = {
            "test": binary_metrics(p, y),
            "slices": {name: binary_metrics(p[m], y[m]) for name, m in slices.items() if m.sum() >= 50},
            "reliability": reliability(p, y),
        }
    if not heads["next_category"]:
        result["heads"]["next_category"] = next_category_baseline(train, test, labels_train, labels_test, category)
    return result


def next_category_baseline(train, test, labels_train, labels_test, category) -> dict:
    """P(next category | this step's category) from train's transitions (add-one); top-1 accuracy and log loss."""
    C = int(category.max()) + 1
    counts = np.ones((C, C))
    now = category[train.steps["item_ids"].astype(np.int64)]
    known = labels_train["next_category"] >= 0
    np.add.at(counts, (now[known], labels_train["next_category"][known]), 1)
    table = counts / counts.sum(axis=1, keepdims=True)
    now_test = category[test.steps["item_ids"].astype(np.int64)]
    target = labels_test["next_category"]
    known = target >= 0
    p = table[now_test[known]]
    chosen = p[np.arange(known.sum()), target[known]]
    return {"test": {"accuracy@1": float((p.argmax(axis=1) == target[known]).mean()),
                     "log_loss": float(-np.log(chosen).mean()), "n": int(known.sum())}}  # fmt: skip


def plot_reliability(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    binary = [h for h in ("purchase", "exit", "abandon") if h in result["heads"]]
    figure, axes = plt.subplots(1, max(len(binary), 1), figsize=(4 * max(len(binary), 1), 4), squeeze=False)
    for axis, head in zip(axes[0], binary):
        points = result["heads"][head]["reliability"]
        axis.plot([0, 1], [0, 1], color="grey", linewidth=1)
        axis.scatter([p for p, _, _ in points], [o for _, o, _ in points], s=[max(8, n**0.5) for *_, n in points])
        metrics = result["heads"][head]["test"]
        axis.set_title(f"{head}: AUC {metrics['auc']:.3f}, ECE {metrics['ece']:.3f}")
        axis.set_xlabel("predicted")
        axis.set_ylabel("observed")
    figure.suptitle("Session-feature baseline: reliability on test")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """python -m training.intent data_dir=<prepared folder> [out=<folder>]: the baseline the intent heads must beat."""
    import argparse
    import sys

    from intentrec.errors import IntentrecError
    from intentrec.serving.cli import key_value_flags

    parser = argparse.ArgumentParser(description="Intent signals: the session-feature baseline on a prepared data set")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(
        key_value_flags(sys.argv[1:] if argv is None else argv, {"data_dir": "--data-dir", "out": "--out"})
    )
    try:
        result = evaluate_baseline(args.data_dir)
    except IntentrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = args.out or args.data_dir / "intent_baseline"
    out.mkdir(parents=True, exist_ok=True)
    (out / "intent_baseline.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_reliability(result, out / "reliability.png")
    lines = ["| head | AUC | log loss | Brier | ECE | positives | test steps |", "|---|---|---|---|---|---|---|"]
    for head, entry in result["heads"].items():
        m = entry["test"]
        if head == "next_category":
            lines.append(
                f"| next_category | accuracy@1 {m['accuracy@1']:.4f} | {m['log_loss']:.4f} | - | - | - | {m['n']:,} |"
            )
        else:
            lines.append(f"| {head} | {m['auc']:.4f} | {m['log_loss']:.4f} | {m['brier']:.4f} | {m['ece']:.4f} | "
                         f"{m['positives']:.3f} | {m['n']:,} |")  # fmt: skip
    lines += [f"| {head} | off: {reason} | | | | | |" for head, reason in result["unavailable"].items()]
    (out / "intent_baseline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
