"""Paired significance tests between runs over the same test examples.

Each run writes `ranks.npz` (training.evaluate.write_ranks): for every test example, the counts of
items scored above and equal to its target. From them any ranking metric is recomputed per example
(`training.metrics.expected_metrics`). Two variants are compared on the per-example metric averaged
over each variant's seeds, so a test sequence is one paired observation:

- paired permutation (sign-flip) test: under the null the sign of each example's difference is a coin
  flip; p = (1 + #{|mean of flipped differences| >= |observed mean|}) / (1 + resamples), two-sided;
- paired bootstrap: examples resampled with replacement; the 95% interval of the mean difference and
  its two-sided p-value (twice the smaller tail mass beyond 0).

    python -m training.significance --a <runs of A (seeds)> --b <runs of B> [--metric test/ndcg@10]
    python -m training.significance --a <runs> --stage-a hybrid_ --b <the same runs>   # a stage against the model
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from intentrec.training.metrics import expected_metrics

RANKS_FILE = "ranks.npz"


class RanksMissing(Exception):
    """A run has no per-example ranks for the asked stage (older run, or that stage did not run)."""


def parse_metric(metric: str) -> tuple[str, str, int]:
    """`test/ndcg@10` -> ("test", "ndcg", 10); `rerank_test/hr@20` -> ("rerank_test", "hr", 20)."""
    try:
        stage, name = metric.split("/")
        kind, k = name.split("@")
        if kind not in ("hr", "ndcg", "mrr") or not stage.endswith("test"):
            raise ValueError
        return stage, kind, int(k)
    except ValueError:
        raise ValueError(
            f"metric {metric!r}: significance needs an overall test ranking metric, e.g. test/ndcg@10, "
            "test/hr@20, rerank_test/mrr@10"
        ) from None


def per_example(run: Path, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(example indices, per-example metric) of one run."""
    stage, kind, k = parse_metric(metric)
    path = Path(run) / RANKS_FILE
    if not path.is_file():
        raise RanksMissing(
            f"{run} has no {RANKS_FILE} (per-example ranks, which training and evaluation runs write); for a run "
            "without it, evaluate its checkpoint again (python -m training.evaluate ckpt_path=<run>/checkpoints/"
            "best.ckpt) and give the evaluation folder"
        )
    with np.load(path) as ranks:
        if f"{stage}.greater" not in ranks:
            raise RanksMissing(
                f"{path} has no {stage} ranks (stages there: {sorted({f.split('.')[0] for f in ranks})})"
            )
        index, greater, ties = (ranks[f"{stage}.{field}"] for field in ("example_index", "greater", "ties"))
    return index, expected_metrics(greater, ties, k)[f"{kind}@{k}"]


def seed_mean(runs: list[Path], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-example metric averaged over the runs (seeds) of one variant; all must cover the same examples."""
    index, total = None, None
    for run in runs:
        run_index, values = per_example(run, metric)
        if index is None:
            index, total = run_index, values.astype(np.float64).copy()
        elif not np.array_equal(index, run_index):
            raise ValueError(f"{run} was tested on other examples than {runs[0]}; compare runs of one split only")
        else:
            total += values
    return index, total / len(runs)


@dataclass
class PairedResult:
    n: int
    mean_a: float
    mean_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_permutation: float
    p_bootstrap: float
    resamples: int = 10_000

    @property
    def floor(self) -> float:
        """The smallest p-value `resamples` can show: no resample as extreme as the observed difference."""
        return 1 / (self.resamples + 1)

    def line(self, a: str, b: str, metric: str) -> str:
        return (
            f"{a} vs {b}: {metric} {self.mean_a:.4f} vs {self.mean_b:.4f}, difference {self.difference:+.4f} "
            f"(95% bootstrap CI {self.ci_low:+.4f} .. {self.ci_high:+.4f}); paired permutation p = "
            f"{format_p(self.p_permutation, self.floor)}, bootstrap p = {format_p(self.p_bootstrap, self.floor)}; "
            f"n = {self.n:,} test examples, {self.resamples:,} resamples"
        )


def format_p(p: float, floor: float = 0.0) -> str:
    """`0.034`, `2.1e-04`, or `<= 1.0e-04` at the resolution of the resamples."""
    if p <= floor:
        return f"<= {floor:.1e}"
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def paired_test(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 0) -> PairedResult:
    """Sign-flip permutation and bootstrap tests of mean(a - b) over paired examples."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_test needs two equal-length 1-d arrays, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    d = a - b
    n, observed = len(d), float(d.mean())
    extreme, boot = 0, np.empty(resamples)
    chunk = max(1, min(resamples, 20_000_000 // max(n, 1)))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        signs = rng.integers(0, 2, size=(size, n), dtype=np.int8) * 2 - 1
        extreme += int((np.abs(signs @ d / n) >= abs(observed) - 1e-15).sum())
        picks = rng.integers(0, n, size=(size, n))
        boot[start : start + size] = d[picks].mean(axis=1)
    low, high = np.quantile(boot, [0.025, 0.975])
    tail = min(float((boot <= 0).mean()), float((boot >= 0).mean()))
    return PairedResult(
        n=n,
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        difference=observed,
        ci_low=float(low),
        ci_high=float(high),
        p_permutation=(extreme + 1) / (resamples + 1),
        p_bootstrap=min(1.0, 2 * tail),
        resamples=resamples,
    )


def compare_variants(
    runs_a: list[Path], runs_b: list[Path], metric: str = "test/ndcg@10", stages: tuple[str, str] = ("", ""), **kwargs
) -> PairedResult:
    """Variant A's runs against B's on `metric`; `stages` prefixes the metric per side (`rerank_`, `hybrid_`),
    so a model can be compared with another's re-ranked or hybrid stage."""
    index_a, a = seed_mean(runs_a, stages[0] + metric)
    index_b, b = seed_mean(runs_b, stages[1] + metric)
    if not np.array_equal(index_a, index_b):
        raise ValueError("the two variants were tested on different examples; compare runs of one split only")
    return paired_test(a, b, **kwargs)


def main(argv: list[str] | None = None) -> PairedResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", nargs="+", type=Path, required=True, help="run folders (seeds) of variant A")
    parser.add_argument("--b", nargs="+", type=Path, required=True, help="run folders (seeds) of variant B")
    parser.add_argument("--metric", default="test/ndcg@10", help="an overall test metric (default test/ndcg@10)")
    parser.add_argument("--resamples", type=int, default=10_000, help="permutations and bootstrap samples")
    parser.add_argument(
        "--stage-a", default="", choices=["", "rerank_", "hybrid_"], help="A's stage (default: the model)"
    )
    parser.add_argument(
        "--stage-b", default="", choices=["", "rerank_", "hybrid_"], help="B's stage (default: the model)"
    )
    args = parser.parse_args(argv)
    try:
        stages = (args.stage_a, args.stage_b)
        result = compare_variants(args.a, args.b, args.metric, stages=stages, resamples=args.resamples)
    except (RanksMissing, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(result.line(", ".join(map(str, args.a)), ", ".join(map(str, args.b)), args.metric))
    return result


if __name__ == "__main__":
    main()
