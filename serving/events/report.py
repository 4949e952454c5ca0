"""The goal-metric report of an A/B experiment: the shop's metrics per arm, with intervals, lifts and checks.

    python -m serving.events report store=sqlite:///artifacts/events/events.db experiment=model-vs-popularity
    python -m serving.events report events=artifacts/events/export experiment_ab=model_vs_popularity ci=bootstrap

**Who is in which arm.** A session belongs to the experiment when it holds an impression labelled with
it (exposure: the shopper saw a list of the experiment); its arm is that of its first such impression.
The analysis unit is the shopper (customer id, else device id, else session id), the unit the serving
path assigns by: all of a shopper's exposed sessions count for the shopper's first arm, and shoppers
seen in several arms (possible only when identity stitching joined two units mid-experiment) are
counted in `shoppers_in_several_arms`.

**Metrics**, each a ratio of sums over the arm's shoppers (sessions: the exposed sessions; an order:
a session with a purchase; revenue: quantity x price of purchases; a bounce: a session with at most one
page view and no other action; time on site: the span from a session's first to its last event):
recommendation CTR (clicks / impressions), add-to-cart rate, conversion rate, cart abandonment rate
(sessions with an add-to-cart and no purchase / sessions with an add-to-cart), bounce rate (per
session), revenue per session, AOV (revenue / orders), page views per session, time on site (minutes
per session).

**Intervals.** Sessions of one shopper are not independent, so every interval treats the shopper as
the unit: `ci=delta` (the default) uses the delta method for a ratio of per-shopper sums (the variance
of sum(Y)/sum(X) linearised around the means; Deng, Knoblich and Lu, KDD 2018), `ci=bootstrap`
resamples shoppers (Poisson(1) weights, `bootstrap` rounds, seeded) and takes percentiles. Each arm
is compared with the control (`control=`, default the first arm): the difference and the relative
lift (treatment / control - 1) with 95% intervals and the two-sided p-value of the difference; the
arms are independent samples. **Sample-ratio check**: a chi-square test of the shoppers per arm
against the configured shares (`experiment_ab=` gives them; without it, equal shares), flagged below
p = 0.001: a split that does not follow its configuration makes every other figure suspect.
**CUPED** (`cuped_before=<time>`): each shopper's same metric from before that time (their sessions
outside the experiment window) is the covariate; the adjusted metric keeps its mean and loses the
variance the covariate explains (Deng et al., WSDM 2013), applied per shopper-level metric with the
theta pooled over arms.

Writes `report.json`, `report.md` and `report.png` (per-arm bars with 95% intervals).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from intentrec.errors import ConfigError, DataError
from intentrec.serving.events.export import EVENT_KEYS, read_frame, shopper_of, source_name
from intentrec.serving.events.schema import iso_ms

Z95 = 1.959963984540054
SRM_ALPHA = 0.001
READ = (
    *EVENT_KEYS,
    "price",
    "quantity",
    "experiment",
    "arm",
)
# name -> (numerator, denominator, label): each a column of the per-shopper sums.
METRICS = {
    "ctr": ("clicks", "impressions", "recommendation CTR"),
    "add_to_cart_rate": ("carted", "sessions", "add-to-cart rate"),
    "conversion_rate": ("ordered", "sessions", "conversion rate"),
    "revenue_per_session": ("revenue", "sessions", "revenue per session"),
    "aov": ("revenue", "ordered", "average order value"),
    "cart_abandonment_rate": ("abandoned", "carted", "cart abandonment rate"),
    "bounce_rate": ("bounced", "sessions", "bounce rate"),
    "page_views_per_session": ("views", "sessions", "page views per session"),
    "time_on_site_minutes": ("minutes", "sessions", "time on site (minutes per session)"),
}
# The metrics that are shares (shown in percent).
RATES = frozenset({"ctr", "add_to_cart_rate", "conversion_rate", "cart_abandonment_rate", "bounce_rate"})
SESSION_COLUMNS = (
    "sessions",
    "impressions",
    "clicks",
    "views",
    "carted",
    "ordered",
    "abandoned",
    "bounced",
    "revenue",
    "minutes",
)


@dataclass(frozen=True)
class ReportSettings:
    experiment: str | None = None  # the experiment's name in the events; None: the only one there
    control: str | None = None  # the arm the others are compared with; None: the first configured (or seen)
    shares: dict | None = None  # arm -> configured share (the sample-ratio check); None: equal
    ci: str = "delta"  # delta | bootstrap
    bootstrap: int = 2000
    seed: int = 0
    cuped_before: int | None = None  # ms: events before it are the CUPED covariate's period; None: no CUPED

    def check(self) -> None:
        if self.ci not in ("delta", "bootstrap"):
            raise ConfigError(f"ci={self.ci!r}; expected delta or bootstrap")
        if not isinstance(self.bootstrap, int) or self.bootstrap < 100:
            raise ConfigError(f"bootstrap={self.bootstrap!r}; expected an integer of at least 100 rounds")


def parse_time(value, name: str) -> int:
    """Epoch milliseconds from an integer or an ISO 8601 time (serving.events.schema.iso_ms)."""
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        return iso_ms(text)
    except ValueError as error:
        raise ConfigError(f"{name}={value!r}; {error}") from None


def session_table(events: pd.DataFrame) -> pd.DataFrame:
    """One row per session: its shopper and the counts the metrics are made of."""
    events = events[events["session_id"].notna()]
    kind = events["event_type"]
    revenue = np.where(kind == "purchase", events["quantity"].fillna(1) * events["price"].fillna(0.0), 0.0)
    action = ~kind.isin(("impression", "click"))
    flags = pd.DataFrame(
        {
            "session_id": events["session_id"],
            "impressions": (kind == "impression").astype(int),
            "clicks": (kind == "click").astype(int),
            "views": (kind == "view").astype(int),
            "carts": (kind == "add_to_cart").astype(int),
            "purchases": (kind == "purchase").astype(int),
            "actions": action.astype(int),
            "revenue": revenue,
            "action_time": events["event_time"].where(action),
        }
    )
    sessions = flags.groupby("session_id").agg(
        impressions=("impressions", "sum"),
        clicks=("clicks", "sum"),
        views=("views", "sum"),
        carts=("carts", "sum"),
        purchases=("purchases", "sum"),
        actions=("actions", "sum"),
        revenue=("revenue", "sum"),
        first=("action_time", "min"),
        last=("action_time", "max"),
    )
    shopper = shopper_of(events).groupby(events["session_id"]).first()  # a login mid-session: the customer
    known = shopper_of(events[events["customer_id"].notna()]).groupby(events["session_id"]).first()
    sessions["shopper"] = known.reindex(sessions.index).fillna(shopper.reindex(sessions.index))
    sessions["sessions"] = 1
    sessions["carted"] = (sessions["carts"] > 0).astype(int)
    sessions["ordered"] = (sessions["purchases"] > 0).astype(int)
    sessions["abandoned"] = ((sessions["carts"] > 0) & (sessions["purchases"] == 0)).astype(int)
    sessions["bounced"] = ((sessions["views"] <= 1) & (sessions["actions"] - sessions["views"] == 0)).astype(int)
    sessions["minutes"] = ((sessions["last"] - sessions["first"]).fillna(0) / 60_000.0).astype(float)
    return sessions


# ---------------------------------------------------------------------------------------------- statistics


def ratio(y: np.ndarray, x: np.ndarray) -> float:
    return float(y.sum() / x.sum()) if x.sum() > 0 else float("nan")


def influence(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per-unit linearisation of sum(y)/sum(x): (y - R x) / mean(x); its variance / n is the ratio's (delta method)."""
    mean_x = x.mean() if len(x) else 0.0
    if mean_x <= 0:
        return np.zeros(len(y))
    return (y - ratio(y, x) * x) / mean_x


@dataclass
class Estimate:
    value: float
    variance: float  # of the estimate (not of a unit)
    draws: np.ndarray | None = None  # bootstrap replicates of the estimate

    def interval(self) -> tuple[float, float]:
        if self.draws is not None:
            finite = self.draws[np.isfinite(self.draws)]
            return tuple(float(v) for v in np.percentile(finite, [2.5, 97.5])) if len(finite) else (math.nan, math.nan)
        half = Z95 * math.sqrt(max(self.variance, 0.0))
        return self.value - half, self.value + half


def estimate(y, x, settings: ReportSettings, weights: np.ndarray | None, covariate: np.ndarray | None, theta: float):
    value = ratio(y, x)
    phi = influence(y, x)
    if covariate is not None:
        value -= theta * covariate.mean()
        phi = phi - theta * (covariate - covariate.mean())
    variance = float(phi.var(ddof=1) / len(phi)) if len(phi) > 1 else math.nan
    draws = None
    if weights is not None:
        sums_y, sums_x = weights @ y, weights @ x
        with np.errstate(invalid="ignore", divide="ignore"):
            draws = sums_y / sums_x
        if covariate is not None:
            draws = draws - theta * (weights @ covariate) / weights.sum(axis=1)
    return Estimate(value, variance, draws)


def compare(treatment: Estimate, control: Estimate) -> dict:
    difference = treatment.value - control.value
    if treatment.draws is not None and control.draws is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            diffs = treatment.draws - control.draws
            lifts = treatment.draws / control.draws - 1
        diffs, lifts = diffs[np.isfinite(diffs)], lifts[np.isfinite(lifts)]
        low, high = (float(v) for v in np.percentile(diffs, [2.5, 97.5])) if len(diffs) else (math.nan, math.nan)
        lift_low, lift_high = (
            (float(v) for v in np.percentile(lifts, [2.5, 97.5])) if len(lifts) else (math.nan, math.nan)
        )
        share_below = float(np.mean(diffs <= 0)) if len(diffs) else math.nan
        p = min(1.0, 2 * min(share_below, 1 - share_below)) if len(diffs) else math.nan
    else:
        se = math.sqrt(max(treatment.variance + control.variance, 0.0))
        low, high = difference - Z95 * se, difference + Z95 * se
        p = math.erfc(abs(difference) / se / math.sqrt(2)) if se > 0 else (1.0 if difference == 0 else 0.0)
        if control.value:
            r = treatment.value / control.value
            lift_se = math.sqrt(treatment.variance / control.value**2 + r**2 * control.variance / control.value**2)
            lift_low, lift_high = r - 1 - Z95 * lift_se, r - 1 + Z95 * lift_se
        else:
            lift_low = lift_high = math.nan
    lift = treatment.value / control.value - 1 if control.value else math.nan
    return {
        "difference": difference,
        "difference_ci": [low, high],
        "lift": lift,
        "lift_ci": [lift_low, lift_high],
        "p_value": p,
        "significant": bool(low > 0 or high < 0),
    }


def sample_ratio(counts: dict[str, int], shares: dict[str, float]) -> dict:
    from scipy.stats import chisquare

    arms = list(counts)
    observed = np.array([counts[a] for a in arms], float)
    expected_share = np.array([shares.get(a, 0.0) for a in arms], float)
    expected = expected_share / expected_share.sum() * observed.sum()
    p = float(chisquare(observed, expected).pvalue) if observed.sum() else 1.0
    return {
        "shoppers": counts,
        "expected_shares": {a: float(s) for a, s in zip(arms, expected_share / expected_share.sum())},
        "p_value": p,
        "mismatch": bool(p < SRM_ALPHA),
    }


# ---------------------------------------------------------------------------------------------- the report


def _per_shopper(sessions: pd.DataFrame) -> pd.DataFrame:
    return sessions.groupby("shopper")[list(SESSION_COLUMNS)].sum()


def report(events: pd.DataFrame, settings: ReportSettings | None = None) -> dict:
    """The per-arm metrics, comparisons and checks of one experiment (see the module's docstring)."""
    settings = settings or ReportSettings()
    settings.check()
    exposed = events[(events["event_type"] == "impression") & events["experiment"].notna()]
    found = sorted(exposed["experiment"].unique())
    if not found:
        raise DataError(
            "no impression in these events carries an experiment; serve with experiment_ab set and log impressions"
        )
    name = settings.experiment or (found[0] if len(found) == 1 else None)
    if name is None or name not in found:
        raise ConfigError(f"experiment={settings.experiment!r}; the events hold experiments {found}: name one")
    exposed = exposed[(exposed["experiment"] == name) & exposed["session_id"].notna()].sort_values("event_time")
    first = exposed.groupby("session_id").agg(arm=("arm", "first"), exposed_at=("event_time", "first"))
    sessions = session_table(events[events["session_id"].isin(first.index)]).join(first)
    by_shopper = sessions.sort_values("exposed_at").groupby("shopper")["arm"]
    several = int((by_shopper.nunique() > 1).sum())
    sessions["arm"] = sessions["shopper"].map(by_shopper.first())
    seen = sorted(sessions["arm"].dropna().unique())
    arms = [a for a in (settings.shares or {}) if a in seen] + [a for a in seen if a not in (settings.shares or {})]
    control = settings.control or arms[0]
    if control not in arms:
        raise ConfigError(f"control={control!r}; the experiment {name!r} has arms {arms}")
    shoppers = {arm: _per_shopper(sessions[sessions["arm"] == arm]) for arm in arms}
    shares = settings.shares or {arm: 1 / len(arms) for arm in arms}
    pre = None
    if settings.cuped_before is not None:
        before = events[(events["event_time"] < settings.cuped_before) & ~events["session_id"].isin(first.index)]
        pre = _per_shopper(session_table(before)) if len(before) else None
    rng = np.random.default_rng(settings.seed)
    weights = {
        arm: rng.poisson(1.0, (settings.bootstrap, len(frame))).astype(float) if settings.ci == "bootstrap" else None
        for arm, frame in shoppers.items()
    }
    metrics = {}
    for metric, (numerator, denominator, label) in METRICS.items():
        covariates, theta = {arm: None for arm in arms}, 0.0
        if pre is not None:
            psi_all = influence(pre[numerator].to_numpy(float), pre[denominator].to_numpy(float))
            psi = pd.Series(psi_all, index=pre.index)
            covariates = {arm: psi.reindex(frame.index).fillna(0.0).to_numpy() for arm, frame in shoppers.items()}
            phi = np.concatenate(
                [influence(f[numerator].to_numpy(float), f[denominator].to_numpy(float)) for f in shoppers.values()]
            )
            cov = np.concatenate(list(covariates.values()))
            theta = float(np.cov(phi, cov)[0, 1] / cov.var(ddof=1)) if cov.var() > 0 else 0.0
        estimates = {
            arm: estimate(
                frame[numerator].to_numpy(float),
                frame[denominator].to_numpy(float),
                settings,
                weights[arm],
                covariates[arm],
                theta,
            )
            for arm, frame in shoppers.items()
        }
        metrics[metric] = {
            "label": label,
            "ratio_of": [numerator, denominator],
            "arms": {arm: {"value": e.value, "ci": list(e.interval())} for arm, e in estimates.items()},
            "vs_control": {arm: compare(estimates[arm], estimates[control]) for arm in arms if arm != control},
            **({"cuped_theta": theta} if pre is not None else {}),
        }
    return {
        "experiment": name,
        "control": control,
        "arms": arms,
        "settings": {k: v for k, v in settings.__dict__.items() if k != "shares"},
        "sessions": {arm: int(frame["sessions"].sum()) for arm, frame in shoppers.items()},
        "shoppers": {arm: len(frame) for arm, frame in shoppers.items()},
        "shoppers_in_several_arms": several,
        "sample_ratio": sample_ratio({arm: len(frame) for arm, frame in shoppers.items()}, shares),
        "metrics": metrics,
    }


def _clean(value):
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(value) else round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _fmt(value, ci=None, percent=False) -> str:
    if value is None:
        return "-"
    scale, unit = (100, "%") if percent else (1, "")
    text = f"{value * scale:.3g}{unit}"
    if ci and None not in ci:
        text += f" [{ci[0] * scale:.3g}, {ci[1] * scale:.3g}]"
    return text


def write_report(document: dict, out: str | Path, source: str) -> dict:
    """report.json, report.md and report.png under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    document = _clean({**document, "source": source, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    (out / "report.json").write_text(json.dumps(document, indent=2) + "\n")
    arms, control = document["arms"], document["control"]
    srm = document["sample_ratio"]
    lines = [
        f"# Experiment {document['experiment']}",
        "",
        f"Source `{source}`; control arm `{control}`; intervals: 95%, {document['settings']['ci']} over shoppers"
        + (
            f", CUPED on events before {document['settings']['cuped_before']}"
            if document["settings"]["cuped_before"]
            else ""
        )
        + ".",
        "",
        "| arm | shoppers | sessions |",
        "|---|---|---|",
        *[f"| {a} | {document['shoppers'][a]:,} | {document['sessions'][a]:,} |" for a in arms],
        "",
        f"Sample-ratio check: p = {srm['p_value']:.3g} against shares {srm['expected_shares']}"
        + (
            " - **MISMATCH: the split does not follow its configuration; do not trust the comparisons**"
            if srm["mismatch"]
            else " (no mismatch)"
        )
        + f". Shoppers seen in several arms: {document['shoppers_in_several_arms']}.",
        "",
        "| metric | "
        + " | ".join(arms)
        + " | "
        + " | ".join(f"{a} vs {control}: lift [95%], p" for a in arms if a != control)
        + " |",
        "|---|" + "---|" * (2 * len(arms) - 1),
    ]
    for name, metric in document["metrics"].items():
        percent = name in RATES
        cells = [_fmt(metric["arms"][a]["value"], metric["arms"][a]["ci"], percent) for a in arms]
        for arm in arms:
            if arm == control:
                continue
            c = metric["vs_control"][arm]
            mark = " **significant**" if c["significant"] else ""
            cells.append(
                f"{_fmt(c['lift'], c['lift_ci'], True)}, p = {c['p_value']:.3g}{mark}"
                if c["lift"] is not None and c["p_value"] is not None
                else "-"
            )
        lines.append(f"| {metric['label']} | " + " | ".join(cells) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plot(document, out / "report.png")
    return document


PLOTTED = ("conversion_rate", "revenue_per_session", "add_to_cart_rate", "ctr", "aov", "bounce_rate")


def _plot(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = document["arms"]
    figure, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for axis, metric in zip(axes.flat, PLOTTED):
        entry = document["metrics"][metric]
        values = [entry["arms"][a]["value"] or 0.0 for a in arms]
        errors = np.array(
            [[v - (entry["arms"][a]["ci"][0] or v), (entry["arms"][a]["ci"][1] or v) - v] for a, v in zip(arms, values)]
        ).T
        axis.bar(arms, values, yerr=errors, capsize=6, color=[f"C{i}" for i in range(len(arms))])
        axis.set_title(entry["label"])
    figure.suptitle(f"Experiment {document['experiment']}: per-arm means with 95% intervals")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run(out, source, settings: ReportSettings | None = None) -> dict:
    """Read `source` (an EventStore, or the path of exported Parquet), report, write under `out`."""
    return write_report(report(read_frame(source, READ), settings), out, source_name(source))
