"""Real-time recommendation from an export bundle: a pipeline of stages, each its own module.

This is what the Triton `recommend` and `similar_items` models run, one call per batch of requests;
it also runs in process (tests, campaign batches, abandoned carts). `Recommender.recommend` passes
one `Batch` (serving.rows) through the stages in `Recommender.stages`, in order, and times each:

1. decode (serving.decode): limits, the shopper's stored profile (serving.profiles), raw values ->
   model inputs with the feature rules training used (data.features), exclusion sets and filters;
2. encode (serving.encode): the ONNX query encoder;
3. retrieve (serving.retrieve): FAISS candidates (exact scores under a filter), the hybrid with
   co-occurrence when the bundle serves it;
4. rank (serving.rank): the ONNX ranker, when the bundle has one;
5. rules (serving.rules): cut to k, complement slots after a purchase, popularity without history;
6. respond (serving.respond): catalogue ids, scores and info per row.

A stage is a class with a `name` and `run(batch)`; adding one (an experiment arm, an intent head)
is its module and one entry in the list. Per-request rules are documented in each stage's module;
the limits one request row may carry are `serving.request.RequestLimits` (conf/serving.yaml).

With a profile store (`profile_store`, the event collector's store) a request may name the shopper
instead of carrying events: `identity = "customer:c1"` (or `device:`/`session:`; a bare id is a
customer); `info.profile` tells what was read.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from intentrec.errors import ConfigError
from intentrec.serving.bundle import load_bundle
from intentrec.serving.catalogue import Catalogue
from intentrec.serving.decode import Decode
from intentrec.serving.encode import Encode
from intentrec.serving.experiments import Assign, Experiment
from intentrec.serving.explore import Explore
from intentrec.serving.profiles import Profiles
from intentrec.serving.rank import Rank
from intentrec.serving.request import MAX_K, Query, RequestError, RequestLimits, Result
from intentrec.serving.respond import Respond
from intentrec.serving.retrieve import Retrieve
from intentrec.serving.rows import Batch, Row
from intentrec.serving.rules import Rules
from intentrec.serving.runtime import Runtime

log = logging.getLogger(__name__)


class Recommender:
    """Loads a bundle once; `recommend` and `similar` answer batches of requests."""

    def __init__(
        self,
        bundle_dir: Path,
        threads: int = 1,
        use_gpu: bool | None = None,
        verify: bool = True,
        remote=None,
        profile_store=None,
        complement_slots: int = 2,
        complement_window_hours: float = 24.0,
        limits: RequestLimits | None = None,
        model_version: str | None = None,
        experiment: Experiment | None = None,
        arm_bundles: dict[str, Path] | None = None,
        retrieval: bool = True,
        banners=None,
        _arm: bool = False,
    ):
        """`remote`: optional `run(model_name, feed) -> output` that runs `query_encoder` and `ranker`
        elsewhere (Triton BLS calls in the production repository); by default ONNX Runtime runs them here.
        `profile_store`: an `EventStore` or its URL (opened read-only on first use) for `Query.identity`.
        `complement_slots`: after a purchase (web or store) in the last `complement_window_hours`, each
        list holds at least that many items of the purchased item's complement categories
        (`complements.json` of the bundle), placed last when the model ranked fewer; 0 turns the rule off.
        `limits`: what one request row may carry (`RequestLimits`).
        `model_version`: the label every answer carries (the Triton repository passes its version);
        by default the bundle's digest (`Bundle.digest`).
        `experiment`: an A/B experiment (serving.experiments) whose arms this recommender assigns;
        `arm_bundles`: the bundle of every other model version an arm names (version -> folder).
        `retrieval=False`: a light recommender that answers `intent` only (no index, no ranker loaded).
        `banners`: a banner catalogue (serving.banners: a file or the list of banners) that `banners` ranks."""
        self.limits = limits or RequestLimits()
        self.bundle = load_bundle(Path(bundle_dir), verify=verify)
        self.model_version = model_version or self.bundle.digest
        self.catalogue = c = Catalogue(self.bundle)
        runtime = Runtime.choose(threads, use_gpu)
        self.index = runtime.index(self.bundle) if retrieval else None
        self.profiles = profiles = Profiles(profile_store, c.max_seq_len, c.past)
        window_ms = int(float(complement_window_hours) * 3_600_000)
        self.decoder = Decode(c, self.limits, profiles, window_ms)
        self.encoder = Encode(c, runtime, remote)
        self.retriever = Retrieve(c, self.index) if retrieval else None
        self.ranker = Rank(c, runtime, remote) if retrieval else None
        self.experiment = experiment
        self.banner_set = None
        if banners is not None:
            from intentrec.serving.banners import BannerSet, load_banners

            names = self.encoder.signals.names if self.encoder.signals is not None else None
            self.banner_set = BannerSet(load_banners(banners), c, names)
        shared = dict(
            threads=threads,
            use_gpu=use_gpu,
            verify=verify,
            remote=remote,
            profile_store=profile_store,
            complement_slots=complement_slots,
            complement_window_hours=complement_window_hours,
            limits=self.limits,
        )
        self.arms = {} if _arm else self._arm_models(experiment, arm_bundles or {}, shared)
        self.stages = [
            self.decoder,
            Assign(experiment, self.model_version, profiles),
            self.encoder,
            self.retriever,
            self.ranker,
            Explore(),
            Rules(c, complement_slots),
            Respond(c, self.model_version),
        ]
        self.timing: dict[str, float] = {}  # the last recommend() batch's milliseconds per stage
        if not retrieval:
            self.stages = [self.decoder, self.encoder]
        log.info(
            "recommender: %d items, dim %d, ranker %s, intent signals %s",
            c.num_items, c.dim, self.ranker is not None and self.ranker.session is not None,
            self.encoder.signals is not None,
        )  # fmt: skip

    def decode(self, q: Query) -> Row:
        """One request's model inputs and rule sets (the decode stage alone); raises RequestError."""
        return self.decoder.decode(q)

    def encode(self, rows: list[Row]) -> np.ndarray:
        """(B, D) query vectors of decoded rows that have a known event (the encode stage alone)."""
        return self.encoder.encode(rows)

    def intent(self, queries: list[Query]) -> list[Result | RequestError]:
        """The intent signals of each request alone (decode and encode; no retrieval): a Result with no items
        and `info.intent` (serving.intent), or `info.intent` None and `info.fallback` for a row without a known
        event. A bundle without intent heads refuses every row, saying how to get them."""
        if self.encoder.signals is None:
            message = (
                f"model version {self.model_version} has no intent heads; train with intent.heads=second_stage "
                "(or joint) and export that checkpoint"
            )
            return [RequestError(message) for _ in queries]

        def answer(row: Row) -> Result:
            info = {"intent": row.intent, **{k: v for k, v in row.info.items() if k != "fallback"}}
            if row.intent is None:
                info["fallback"] = "no known event: the signals need the shopper's events"
            return Result([], [], info)

        return self._answer_rows(queries, (self.decoder, self.encoder), answer)

    def banners(self, queries: list[Query]) -> list[Result | RequestError]:
        """The banner catalogue ranked for each request (serving.banners): a Result whose `item_ids` are the
        banner ids, best first (`k` of them), `scores` their scores and `info.banners` their titles."""
        if self.banner_set is None:
            return [RequestError("no banner catalogue is loaded; serve with --banners <file>") for _ in queries]

        def answer(row: Row) -> Result:
            ids, scores, info = self.banner_set.rank(row)
            return Result(ids, scores, {**row.info, **info})

        return self._answer_rows(queries, (self.decoder, self.encoder, self.retriever), answer)

    def _answer_rows(self, queries: list[Query], stages, answer) -> list[Result | RequestError]:
        """Run `stages` over the batch of `queries`: each decoded row is answered by `answer(row)` (then labelled
        with this model version), a refused row keeps its RequestError."""
        batch = Batch(list(queries))
        for stage in stages:
            stage.run(batch)
        return [answer(row).label(self.model_version) if isinstance(row, Row) else row for row in batch.rows]

    def recommend(self, queries: list[Query]) -> list[Result | RequestError]:
        """Answer a batch; a request that fails validation gets its RequestError, the others their Result.

        `self.timing` then holds the batch's milliseconds per stage."""
        if self.index is None:
            raise ConfigError("this recommender was loaded for intent signals only (retrieval=False)")
        batch = Batch(list(queries))
        timing: dict[str, float] = {}
        for stage in self.stages:
            start = time.perf_counter()
            stage.run(batch)
            timing[stage.name] = round((time.perf_counter() - start) * 1000, 3)
        delegated: dict[str, list[int]] = {}
        for position, row in enumerate(batch.rows):
            if isinstance(row, Row) and row.delegate is not None:
                delegated.setdefault(row.delegate, []).append(position)
        for version, positions in delegated.items():
            start = time.perf_counter()
            answers = self.arms[version].recommend([batch.queries[p] for p in positions])
            for position, answer in zip(positions, answers):
                batch.results[position] = answer
            timing[f"arm_{version}"] = round((time.perf_counter() - start) * 1000, 3)
        self.timing = timing
        return batch.results

    def _arm_models(self, experiment, bundles, shared: dict) -> dict[str, Recommender]:
        """A recommender per other model version the experiment's arms name (each assigns the same way)."""
        if experiment is None:
            return {}
        missing = sorted(v for v in experiment.versions() if v != self.model_version and v not in bundles)
        if missing:
            raise ConfigError(
                f"experiment {experiment.name!r}: arm model version(s) {missing} are not available here (this model is "
                f"version {self.model_version!r}; known versions: {sorted(bundles)}). Publish the version to the "
                "repository first, or fix the arm's model_version."
            )
        return {
            version: Recommender(
                Path(bundles[version]), model_version=version, experiment=experiment, _arm=True, **shared
            )
            for version in sorted(experiment.versions() - {self.model_version})
        }

    def similar(self, item_ids: list[list[str]], ks: list[int]) -> list[Result | RequestError]:
        """Nearest items to each request's item(s) (their mean vector), the items themselves left out."""
        c = self.catalogue
        results: list = []
        rows, wanted = [], []
        for ids, k in zip(item_ids, ks):
            if not isinstance(k, int | np.integer) or not 1 <= int(k) <= MAX_K:
                results.append(RequestError(f"k={k!r}; expected an integer from 1 to {MAX_K}."))
                continue
            try:
                self.limits.items("item_ids", len(ids))
                self.limits.strings("item_ids", ids)
            except RequestError as error:
                results.append(error)
                continue
            idx = c.indexes(ids)
            info = {"unknown_items": int((idx == 0).sum()), "fallback": None}
            if not (idx > 0).any():
                info["fallback"] = "popularity"
                pool = c.popular[: int(k)]
                results.append(Result(c.item_ids[pool].tolist(), c.popularity[pool].tolist(), info))
                continue
            results.append(None)
            rows.append((len(results) - 1, idx[idx > 0], int(k), info))
            wanted.append(int(k) + int((idx > 0).sum()))
        if rows:
            queries = np.stack([c.embeddings[idx].mean(axis=0) for _, idx, _, _ in rows]).astype(np.float32)
            scores, found = self.index.search(queries, min(c.num_items, max(wanted)))
            for (slot, idx, k, info), s, f in zip(rows, scores, found):
                items = f + 1
                keep = (f >= 0) & ~np.isin(items, idx)
                results[slot] = Result(c.item_ids[items[keep][:k]].tolist(), s[keep][:k].astype(float).tolist(), info)
        for result in results:  # labelled in request order, so their ids sort as the requests came
            if isinstance(result, Result):
                result.label(self.model_version)
        return results
