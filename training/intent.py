"""Intent signals: probability metrics, calibration, the session-feature baseline and the heads' evaluation.

The labels are one rule (training.intent_labels, re-exported here). Metrics for a probability `p` of a binary
label: AUC (the Mann-Whitney statistic, ties counted half), log loss, Brier score and expected calibration
error (ECE: equal-width bins, the mean |accuracy - confidence| weighted by the bins' counts). Calibration on
validation: temperature scaling of logits (one scalar, log loss minimised) or isotonic regression
(pool-adjacent-violators). The baseline is a logistic regression on hand-made session features
(`session_features`: steps so far, time in the session, cart size so far, device, hour band), which the heads
must beat. `evaluate_heads` measures a model's heads beside it; `train_heads` is the second stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from intentrec.training.intent_labels import (  # noqa: F401 - the label rule, re-exported
    BINARY_HEADS,
    CART_EVENT_CODES,
    HEADS,
    available_heads,
    intent_labels,
    item_categories,
    own_steps,
    session_starts,
)

ECE_BINS = 15
CALIBRATIONS = ("temperature", "isotonic")


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
    change = np.select([kinds == CART_EVENT_CODES[name] for name in ("add_to_cart", "remove_from_cart", "purchase")],
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


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """The mean |observed rate - mean predicted| over equal-width bins, weighted by their counts."""
    return float(
        sum(count * abs(observed - predicted) for predicted, observed, count in reliability(p, y, bins)) / len(y)
    )


def binary_metrics(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y, np.float64)
    return {
        "auc": auc(p, y),
        "log_loss": float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()),
        "brier": float(((p - y) ** 2).mean()),
        "ece": expected_calibration_error(p, y, bins),
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


def fit_calibration(logits: np.ndarray, y: np.ndarray, method: str) -> dict:
    """The calibration of a binary head fitted on validation logits: a spec `calibrated` applies (JSON-able)."""
    if method == "temperature":
        return {"method": "temperature", "temperature": fit_temperature(logits, y)}
    if method != "isotonic":
        raise ValueError(f"calibration method {method!r}; expected one of {list(CALIBRATIONS)}")
    thresholds, values = fit_isotonic(sigmoid(logits), y)
    return {"method": "isotonic", "thresholds": thresholds.tolist(), "values": values.tolist()}


def calibrated(spec: dict, logits: np.ndarray) -> np.ndarray:
    """Probabilities of a binary head from its logits under a calibration spec (`fit_calibration`); evaluation
    and serving (serving.intent) both apply it."""
    logits = np.asarray(logits, np.float64)
    if spec["method"] == "temperature":
        return sigmoid(logits / float(spec["temperature"]))
    return apply_isotonic((np.asarray(spec["thresholds"]), np.asarray(spec["values"])), sigmoid(logits))


def category_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """(M, C) next-category probabilities: softmax(logits / temperature) over the known categories (code 0,
    unknown, is never a label, so never predicted)."""
    z = np.asarray(logits, np.float64) / float(temperature)
    z[:, 0] = -np.inf
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(z, np.float64)))


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
        p = sigmoid(z @ w)
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
    return sigmoid(np.column_stack([(x - mean) / scale, np.ones(len(x))]) @ w)


# ------------------------------------------------------------------------------------ evaluation

DEVICES = ("unknown", "desktop", "mobile", "tablet")
LENGTHS = ((1, 1), (2, 3), (4, 7), (8, 10**9))
# Temperatures of the next-category softmax tried on validation (log-spaced; 1 = as trained).
CATEGORY_TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(4.0), 25))


def _slices(split, features: np.ndarray) -> dict[str, np.ndarray]:
    """Device and session-length slices of a split's steps (`features`: its session_features)."""
    count = np.rint(np.expm1(features[:, 0])).astype(int)
    device = np.clip(split.steps["device_types"].astype(int), 0, 3)
    out = {f"device={name}": device == code for code, name in enumerate(DEVICES)}
    for low, high in LENGTHS:
        out[f"steps={low}" + ("" if low == high else f"-{high}" if high < 10**9 else "+")] = (count >= low) & (
            count <= high
        )
    return out


def binary_report(p: np.ndarray, y: np.ndarray, slices: dict[str, np.ndarray]) -> dict:
    """Metrics of a binary head on the evaluated steps, per slice (with 50 steps or more) and its reliability points."""
    return {
        "test": binary_metrics(p, y),
        "slices": {name: binary_metrics(p[m], y[m]) for name, m in slices.items() if m.sum() >= 50},
        "reliability": reliability(p, y),
    }


def baseline_probabilities(x_train, labels_train, heads, own_train, x_eval) -> dict[str, np.ndarray]:
    """The session-feature baseline of each available binary head, fitted on train's own steps (`x_train`: train's
    session_features): p per step of the evaluated split (`x_eval`: its session_features)."""
    return {
        head: predict_logistic(fit_logistic(x_train[own_train], labels_train[head][own_train]), x_eval)
        for head in BINARY_HEADS
        if not heads[head]
    }


def evaluate_baseline(data_dir: Path) -> dict:
    """The session-feature baseline of every available head, fitted on train, measured on test's own steps (with slices)."""
    from intentrec.errors import DataError
    from intentrec.training.datamodule import PreparedData, read_split

    data_dir = Path(data_dir)
    if not (data_dir / "vocab.json").is_file():
        raise DataError(f"data_dir={data_dir} holds no prepared data (no vocab.json); run python -m data.prepare first")
    data = PreparedData.load(data_dir)
    event_types, category, split_info = data.vocab_json["event_types"], item_categories(data), data.stats["split"]
    train, test = read_split(data_dir / "train.parquet"), read_split(data_dir / "test.parquet")
    own_train, own_test = own_steps(train, "train", split_info), own_steps(test, "test", split_info)
    labels_train = intent_labels(train, event_types, category)
    labels_test = intent_labels(test, event_types, category)
    heads = available_heads({h: v[own_train] for h, v in labels_train.items()})
    x_train, x_test = session_features(train), session_features(test)
    slices = {name: m[own_test] for name, m in _slices(test, x_test).items()}
    result: dict = {"data_dir": str(data_dir), "heads": {}, "unavailable": {h: r for h, r in heads.items() if r}}
    for head, p in baseline_probabilities(x_train, labels_train, heads, own_train, x_test).items():
        result["heads"][head] = binary_report(p[own_test], labels_test[head][own_test], slices)
    if not heads["next_category"]:
        table = category_transitions(train, labels_train, category, own_train)
        result["heads"]["next_category"] = {"test": category_metrics(table, test, labels_test, category, own_test)}
    return result


def category_transitions(train, labels_train, category, own_train) -> np.ndarray:
    """The next-category baseline: P(next category | this step's category) from train's transitions (add-one)."""
    C = int(category.max()) + 1
    counts = np.ones((C, C))
    now = category[train.steps["item_ids"].astype(np.int64)]
    known = (labels_train["next_category"] >= 0) & own_train
    np.add.at(counts, (now[known], labels_train["next_category"][known]), 1)
    return counts / counts.sum(axis=1, keepdims=True)


def category_metrics(table, evaluated, labels, category, own) -> dict:
    """Accuracy@1 and log loss of the transition table on the evaluated steps with a known next category,
    and accuracy@1 where that category differs from the current step's (`change_accuracy@1`)."""
    now = category[evaluated.steps["item_ids"].astype(np.int64)]
    target = labels["next_category"]
    known = (target >= 0) & own
    p = table[now[known]]
    chosen = p[np.arange(known.sum()), target[known]]
    correct = p.argmax(axis=1) == target[known]
    change = now[known] != target[known]
    return {"accuracy@1": float(correct.mean()), "log_loss": float(-np.log(chosen).mean()), "n": int(known.sum()),
            "change_accuracy@1": float(correct[change].mean()) if change.any() else float("nan"),
            "changes": int(change.sum())}  # fmt: skip


# --------------------------------------------------------------------------------------- the heads


def head_outputs(model, windows: dict[str, np.ndarray], labels: dict[str, np.ndarray], chunk: int = 8192) -> dict:
    """The intent heads of `model` (models.two_tower.TwoTower) over a split's intent windows, per step of the split:
    `binary` (S, 3) logits; with a category head, `top` (S,) its most likely category and, at each of
    CATEGORY_TEMPERATURES, `nll` (S, G) of the labelled next category and `confidence` (S, G) of the top one."""
    import torch

    x, steps = _inputs_of(model, windows)
    S = len(labels["exit"])
    out = {"binary": np.full((S, len(BINARY_HEADS)), np.nan)}
    if model.intent.category is not None:
        G = len(CATEGORY_TEMPERATURES)
        out.update(top=np.full(S, -1, np.int64), nll=np.full((S, G), np.nan), confidence=np.full((S, G), np.nan))
    category = labels.get("next_category", np.full(S, -1, np.int64))
    with torch.no_grad():
        for start in range(0, len(x), chunk):  # (chunk, C) category logits at a time
            logits, at = model.intent(x[start : start + chunk]), steps[start : start + chunk]
            out["binary"][at] = logits["binary"].double().numpy()
            if "top" in out:
                z = logits["category"].double().numpy()
                target = np.maximum(category[at], 0)
                out["top"][at] = z[:, 1:].argmax(axis=1) + 1  # code 0 (unknown) is never predicted
                for g, temperature in enumerate(CATEGORY_TEMPERATURES.tolist()):
                    p = category_probabilities(z, temperature)
                    out["nll"][at, g] = -np.log(np.maximum(p[np.arange(len(p)), target], 1e-300))
                    out["confidence"][at, g] = p.max(axis=1)
    return out


def _inputs_of(model, windows: dict[str, np.ndarray], keep=None, batch_size: int = 256):
    """The heads' inputs at the steps of `windows` (model.intent_inputs), eval mode, no gradients:
    (X (M, width) float32 tensor, flat step index (M,)), the steps where `keep[step]` when given."""
    import torch

    from intentrec.training.datamodule import ArrayDataset

    dataset = ArrayDataset(windows)
    inputs, steps = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = dataset[np.arange(start, min(start + batch_size, len(dataset)))]
            where = batch["step_index"] >= 0
            if keep is not None:
                where &= torch.from_numpy(keep)[batch["step_index"].clamp(min=0)]
            inputs.append(model.intent_inputs(batch)[where].float())
            steps.append(batch["step_index"][where].numpy())
    return torch.cat(inputs), np.concatenate(steps)


def train_heads(model, datamodule, settings: dict, seed: int) -> dict:
    """The second stage (intent.heads=second_stage): the heads of `model` learn on the tower as trained, which
    does not change. Their inputs (model.intent_inputs) are computed once for train's steps (at most
    `max_train_steps`, whole windows drawn at random) and val's own steps; AdamW on the heads' loss
    (models.intent.intent_loss) over shuffled batches of steps, for at most `epochs`, keeping the heads of the
    epoch with the least val loss and stopping after `patience` epochs without a better one. This runs three
    times, from the same start: the heads reading all their inputs, all but the encoder's state, the session
    counters alone; each head keeps the inputs and the weights of the run it validated best in (a binary head
    by val AUC, the next category by val loss; models.intent.IntentHeads.input_masks). Returns a summary
    (`inputs`: what each head reads)."""
    import torch

    with torch.random.fork_rng(devices=[]):  # the stages after this one draw as they would without it
        return _train_heads(model, datamodule, settings, seed)


def _train_heads(model, datamodule, settings: dict, seed: int) -> dict:
    import time

    import torch

    from intentrec.models.intent import LABEL_ARRAYS

    started = time.perf_counter()
    heads = tuple(head for head, reason in datamodule.intent_heads.items() if not reason)
    rng = np.random.default_rng(seed)
    windows = datamodule.intent_train_windows()
    counts = (windows["step_index"] >= 0).sum(axis=1)
    cap = int(settings.get("max_train_steps", 500_000))
    if counts.sum() > cap:
        order = rng.permutation(len(counts))
        chosen = order[: int(np.searchsorted(np.cumsum(counts[order]), cap)) + 1]
        windows = {name: values[np.sort(chosen)] for name, values in windows.items()}
    _, train_labels = datamodule.intent_train
    x_train, steps_train = _inputs_of(model, windows)
    val_windows, val_labels, val_split = datamodule.intent_sets["val"]
    own = own_steps(val_split, "val", datamodule.data.stats["split"])
    x_val, steps_val = _inputs_of(model, val_windows, own)

    def labels_of(labels, steps):
        return {LABEL_ARRAYS[h]: torch.from_numpy(labels[h][steps].astype(np.int64)) for h in heads}

    y_train, y_val = labels_of(train_labels, steps_train), labels_of(val_labels, steps_val)
    intent = model.intent
    candidates = {
        "state, context and counters": torch.ones(intent.width),
        "context and counters": intent.without_state(),
        "counters": intent.counters_only(),
    }
    fitted, scores = {}, {}
    for name, mask in candidates.items():  # the same start and the same batches for each
        intent.input_masks[:] = mask
        fitted[name] = _fit_heads(intent, heads, x_train, y_train, x_val, y_val, settings, seed)
        for head in heads:
            intent.heads[head].load_state_dict(fitted[name][1][head])
        scores[name] = _val_scores(intent, heads, x_val, y_val, fitted[name][0])
    # A binary head by its val AUC (calibration comes after, on the same steps), the next category by its val loss.
    chosen = {head: max(candidates, key=lambda name: scores[name][head]) for head in heads}
    for head, name in chosen.items():  # each head: the inputs it validated best with, and its weights there
        intent.input_masks[intent.order.index(head)] = candidates[name]
        intent.heads[head].load_state_dict(fitted[name][1][head])
    intent.eval()
    return {"train_steps": int(len(x_train)), "val_steps": int(len(x_val)),
            "inputs": chosen,
            "best_val_loss": {head: round(fitted[chosen[head]][0][head], 5) for head in heads},
            "val_loss_by_inputs": {name: {h: round(v, 5) for h, v in fitted[name][0].items()} for name in candidates},
            "val_score_by_inputs": {name: {h: round(v, 5) for h, v in scores[name].items()} for name in candidates},
            "epochs": {name: len(fitted[name][2]) for name in candidates},
            "curve": fitted[chosen[heads[0]]][2] if heads else [],
            "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip


def _val_scores(intent, heads, x_val, y_val, best_loss: dict[str, float]) -> dict[str, float]:
    """Per head, higher is better: a binary head's AUC on val's steps, the next category's negative val loss
    (`best_loss`: _fit_heads's, at the weights the heads hold now)."""
    import torch

    from intentrec.models.intent import LABEL_ARRAYS

    intent.eval()
    with torch.no_grad():
        logits = intent(x_val)
    out = {}
    for head in heads:
        if head == "next_category":
            out[head] = -best_loss[head]
            continue
        labels = y_val[LABEL_ARRAYS[head]].numpy()
        keep = labels >= 0
        out[head] = auc(logits["binary"][..., BINARY_HEADS.index(head)].numpy()[keep], labels[keep])
    return out


def _fit_heads(intent, heads, x_train, y_train, x_val, y_val, settings: dict, seed: int):
    """AdamW on the heads' loss from fresh weights (seeded), over shuffled batches of train steps; each head stops
    after `patience` epochs without a lower val loss. Returns (best val loss, the weights there, per head; the
    curve)."""
    import torch

    from intentrec.models.intent import intent_loss

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    for layer in intent.modules():  # from fresh weights, as a stage of its own
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    optimizer = torch.optim.AdamW(intent.parameters(), lr=float(settings.get("lr", 3e-3)), weight_decay=0.01)
    batch_size, patience = int(settings.get("batch_size", 1024)), int(settings.get("patience", 3))
    learning = set(heads)  # the heads still learning: each stops at its own best val loss

    def val_losses() -> dict[str, float]:
        intent.eval()
        with torch.no_grad():
            return {head: float(loss) for head, loss in intent_loss(intent(x_val), y_val, heads)[1].items()}

    def snapshot(head: str) -> dict:
        return {k: v.detach().clone() for k, v in intent.heads[head].state_dict().items()}

    best = val_losses()
    kept, waited, curve = {head: snapshot(head) for head in heads}, dict.fromkeys(heads, 0), []
    for epoch in range(int(settings.get("epochs", 30))):
        if not learning:
            break
        intent.train()
        order = torch.from_numpy(rng.permutation(len(x_train)))
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            labels = {k: v[index] for k, v in y_train.items()}
            loss, _ = intent_loss(intent(x_train[index]), labels, tuple(learning))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        current = val_losses()
        curve.append({"epoch": epoch, **{head: round(value, 5) for head, value in current.items()}})
        for head in sorted(learning):
            if current[head] < best[head] - 1e-5:
                best[head], waited[head], kept[head] = current[head], 0, snapshot(head)
            else:
                waited[head] += 1
                if waited[head] >= patience:
                    learning.discard(head)
    return best, kept, curve


def calibrate_heads(model, datamodule, calibration: str = "temperature", val=None) -> dict:
    """Each available head's calibration fitted on val's own steps: {head: spec (`fit_calibration`)} for the
    binary heads and {"next_category": {"temperature": T}} (the softmax temperature of least val log loss).
    `val`: head_outputs of val when already computed."""
    heads = datamodule.intent_heads
    windows, labels, split = datamodule.intent_sets["val"]
    own = own_steps(split, "val", datamodule.data.stats["split"])
    val = head_outputs(model, windows, labels) if val is None else val
    specs = {
        head: fit_calibration(val["binary"][own, index], labels[head][own], calibration)
        for index, head in enumerate(BINARY_HEADS)
        if not heads[head]
    }
    if not heads["next_category"] and "nll" in val:
        known = (labels["next_category"] >= 0) & own
        specs["next_category"] = {
            "temperature": float(CATEGORY_TEMPERATURES[int(np.argmin(val["nll"][known].mean(axis=0)))])
        }
    return specs


def evaluate_heads(model, datamodule, calibration: str = "temperature") -> tuple[dict, dict]:
    """The intent heads on val and test beside the session-feature baseline: (flat metrics, report).

    Each binary head is calibrated on val's own steps (`temperature`: one scalar on the logits; `isotonic`)
    and measured on test's own steps (`own_steps`) with slices by device and session length; the baseline is
    fitted on train. The next-category head takes the softmax temperature with the least val log loss, and is
    compared with the train transition table. Metrics keys: `intent_test/<head>/<metric>`,
    `intent_baseline_test/<head>/<metric>`, `intent_val/<head>/auc`."""
    heads, split_info = datamodule.intent_heads, datamodule.data.stats["split"]
    runs = {}
    for name in ("val", "test"):
        windows, labels, split = datamodule.intent_sets[name]
        runs[name] = (head_outputs(model, windows, labels), labels, split, own_steps(split, name, split_info))
    (val, labels_val, _, own_val), (test, labels_test, split_test, own_test) = runs["val"], runs["test"]
    specs = calibrate_heads(model, datamodule, calibration, val)
    train, labels_train = datamodule.intent_train  # the labels of the heads that learn: those measured here
    own_train = own_steps(train, "train", split_info)
    x_test = session_features(split_test)
    baseline = baseline_probabilities(session_features(train), labels_train, heads, own_train, x_test)
    slices = {name: m[own_test] for name, m in _slices(split_test, x_test).items()}
    report: dict = {
        "calibration": calibration,
        "heads": {},
        "baseline": {},
        "unavailable": {h: r for h, r in heads.items() if r},
    }
    metrics: dict = {}
    for index, head in enumerate(BINARY_HEADS):
        if heads[head]:
            continue
        z_val, y_val = val["binary"][own_val, index], labels_val[head][own_val]
        z_test, y_test = test["binary"][own_test, index], labels_test[head][own_test]
        spec = specs[head]
        p = calibrated(spec, z_test)
        report["heads"][head] = {**binary_report(p, y_test, slices), "calibration": spec,
                                 "uncalibrated_ece": binary_metrics(sigmoid(z_test), y_test)["ece"]}  # fmt: skip
        report["baseline"][head] = binary_report(baseline[head][own_test], y_test, slices)
        metrics[f"intent_val/{head}/auc"] = auc(z_val, y_val)
        for key in ("auc", "log_loss", "brier", "ece"):
            metrics[f"intent_test/{head}/{key}"] = report["heads"][head]["test"][key]
            metrics[f"intent_baseline_test/{head}/{key}"] = report["baseline"][head]["test"][key]
    if not heads["next_category"] and "top" in test:
        g = int(np.flatnonzero(CATEGORY_TEMPERATURES == specs["next_category"]["temperature"])[0])
        known = (labels_test["next_category"] >= 0) & own_test
        target, top = labels_test["next_category"][known], test["top"][known]
        category = item_categories(datamodule.data)
        now = category[split_test.steps["item_ids"].astype(np.int64)][known]
        correct, change = top == target, now != target
        confidence = test["confidence"][known, g]
        report["heads"]["next_category"] = {"temperature": float(CATEGORY_TEMPERATURES[g]), "test": {
            "accuracy@1": float(correct.mean()), "log_loss": float(test["nll"][known, g].mean()),
            "ece": expected_calibration_error(confidence, correct),
            "change_accuracy@1": float(correct[change].mean()) if change.any() else float("nan"),
            "n": int(known.sum()), "changes": int(change.sum())}}  # fmt: skip
        table = category_transitions(train, labels_train, category, own_train)
        report["baseline"]["next_category"] = {
            "test": category_metrics(table, split_test, labels_test, category, own_test)
        }
        for key in ("accuracy@1", "change_accuracy@1", "log_loss"):
            metrics[f"intent_test/next_category/{key}"] = report["heads"]["next_category"]["test"][key]
            metrics[f"intent_baseline_test/next_category/{key}"] = report["baseline"]["next_category"]["test"][key]
    return metrics, report


def measure_heads(model, datamodule, cfg, run_dir: Path, metrics: dict, info: dict) -> None:
    """Training's and a checkpoint evaluation's last stage with intent heads: evaluate_heads into `metrics`
    and `info["intent"]`, its report into `run_dir` (write_heads_report)."""
    intent_metrics, report = evaluate_heads(model, datamodule, str(cfg.intent.calibration))
    metrics.update(intent_metrics)
    write_heads_report(run_dir, report)
    info["intent"] = {key: cfg.intent[key] for key in ("heads", "weight", "calibration")}
    info["intent"]["unavailable"] = report["unavailable"]


def write_heads_report(run_dir: Path, report: dict) -> None:
    """`intent.json`, `intent.md` and `intent_reliability.png` in a run folder."""
    run_dir = Path(run_dir)
    (run_dir / "intent.json").write_text(json.dumps(report, indent=2) + "\n")
    title = f"Intent heads (calibration: {report['calibration']}) against the session-feature baseline, on test"
    (run_dir / "intent.md").write_text(f"# {title}\n\n" + "\n".join(intent_table(report)) + "\n")
    plot_reliability(report, run_dir / "intent_reliability.png", title)


def plot_reliability(result: dict, path: Path, title: str) -> None:
    """One panel per binary head: observed rate against predicted probability per bin (point size: steps),
    for `result["heads"]` and, when present, `result["baseline"]`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    binary = [h for h in BINARY_HEADS if h in result["heads"]]
    figure, axes = plt.subplots(1, max(len(binary), 1), figsize=(4 * max(len(binary), 1), 4), squeeze=False)
    series = [("heads" if "baseline" in result else "baseline", result["heads"])]
    if "baseline" in result:
        series.append(("baseline", result["baseline"]))
    for axis, head in zip(axes[0], binary):
        axis.plot([0, 1], [0, 1], color="grey", linewidth=1)
        titles = []
        for (label, reports), marker in zip(series, "os"):
            points, metrics = reports[head]["reliability"], reports[head]["test"]
            sizes = [max(8, n**0.5) for *_, n in points]
            axis.scatter([p for p, _, _ in points], [o for _, o, _ in points], s=sizes, marker=marker, label=label)
            titles.append(f"{label} AUC {metrics['auc']:.3f} ECE {metrics['ece']:.3f}")
        axis.set_title(f"{head}\n" + "\n".join(titles), fontsize=9)
        axis.set_xlabel("predicted")
        axis.set_ylabel("observed")
        if len(series) > 1:
            axis.legend(loc="upper left", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def intent_table(result: dict) -> list[str]:
    """Markdown rows of every head (and of the baseline beside each, when `result` has one)."""
    lines = ["| head | by | AUC | log loss | Brier | ECE | positives | steps |", "|---|---|---|---|---|---|---|---|"]
    series = [("heads" if "baseline" in result else "baseline", result["heads"])]
    if "baseline" in result:
        series.append(("baseline", result["baseline"]))
    for head in (*BINARY_HEADS, "next_category"):
        for label, reports in series:
            if head not in reports:
                continue
            m = reports[head]["test"]
            if head == "next_category":
                ece = f"{m['ece']:.4f}" if "ece" in m else "-"
                lines.append(f"| next_category | {label} | accuracy@1 {m['accuracy@1']:.4f} (where it changes: "
                             f"{m['change_accuracy@1']:.4f}) | {m['log_loss']:.4f} | - | {ece} | - | {m['n']:,} |")  # fmt: skip
            else:
                lines.append(f"| {head} | {label} | {m['auc']:.4f} | {m['log_loss']:.4f} | {m['brier']:.4f} | "
                             f"{m['ece']:.4f} | {m['positives']:.3f} | {m['n']:,} |")  # fmt: skip
    lines += [f"| {head} | off: {reason} | | | | | | |" for head, reason in result["unavailable"].items() if reason]
    return lines


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
    plot_reliability(result, out / "reliability.png", "Session-feature baseline: reliability on test")
    lines = intent_table(result)
    (out / "intent_baseline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
