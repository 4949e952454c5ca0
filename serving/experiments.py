"""A/B experiments in the serving path: arms, deterministic assignment, and the `assign` stage.

An experiment (`conf/experiment_ab/<name>.yaml`, chosen with `experiment_ab: <name or path>` in
conf/serving.yaml) names itself, a salt and its arms:

    name: home-model-vs-popularity
    salt: home-2026-12            # a new salt reshuffles every shopper; keep it while the experiment runs
    arms:
      - {name: model, share: 0.5}                        # the serving model
      - {name: popularity, share: 0.5, policy: popularity}

An arm is a **policy** (`model`: the serving model; `popularity`: the most popular items under the
same rules and filters; `no_context`: the model with the request's context, loyalty and past purchases
left out), optionally **another model version** (`model_version: "2"`: a version in the Triton
repository, or in process a bundle given to the Recommender) and a **business-rule variant**
(`complement_slots: 0`). Shares are each arm's part of the traffic and sum to 1.

Assignment hashes the shopper's identity with the salt (SHA-256; `bucket` in [0, 1) against the
arms' cumulative shares), so it needs no state, survives restarts and is the same in every process.
The unit is the customer once known (the profile store's canonical customer of `identity`, or of the
request's `shopper` device), otherwise the device (or session) the request names: after a login links
a device to a customer, every device of that customer gets the customer's arm. A request naming no
shopper is outside the experiment (`experiment` and `arm` null; served by the serving model).

Guards: shares must be positive and sum to 1; arm names unique; a `model_version` must exist where the
experiment is loaded; and an experiment's salt remembers its arms (`check_registry`): changing the
arms or shares under the same salt would move shoppers between arms mid-experiment, so it is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from intentrec.errors import ConfigError
from intentrec.serving.profiles import identity_key
from intentrec.serving.request import RequestError
from intentrec.serving.rows import Batch, Row

POLICIES = ("model", "popularity", "no_context")
SHARE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Arm:
    name: str
    share: float
    policy: str = "model"
    model_version: str | None = None  # None: the model that serves the request
    complement_slots: int | None = None  # None: the serving configuration's
    explore: float = 0.0  # share of lists shown in random order (serving.explore); 0: none
    explore_pool: int = 20  # how many of the ranked items a random order draws from


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    arms: tuple[Arm, ...] = field(default_factory=tuple)

    @classmethod
    def from_dict(cls, values: dict, source: str = "experiment_ab") -> Experiment:
        """Validate a config mapping; every error names `source`, the key and the value."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping with name, salt and arms; got {type(values).__name__}")
        unknown = set(values) - {"name", "salt", "arms"}
        if unknown:
            raise ConfigError(f"{source}: unknown keys {sorted(unknown)}; expected name, salt, arms")
        for key in ("name", "salt"):
            if not isinstance(values.get(key), str) or not values[key].strip():
                raise ConfigError(f"{source}: {key}={values.get(key)!r}; expected a non-empty string")
        raw = values.get("arms")
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{source}: arms={raw!r}; expected a list of arms, each with a name and a share")
        arms = []
        allowed = {f for f in Arm.__dataclass_fields__}
        for position, arm in enumerate(raw):
            where = f"{source}: arms[{position}]"
            if not isinstance(arm, dict):
                raise ConfigError(f"{where}={arm!r}; expected a mapping with name and share")
            unknown = set(arm) - allowed
            if unknown:
                raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; expected {sorted(allowed)}")
            name, share = arm.get("name"), arm.get("share")
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"{where}.name={name!r}; expected a non-empty string")
            if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
                raise ConfigError(f"{where}.share={share!r}; expected a number in (0, 1]")
            policy = arm.get("policy", "model")
            if policy not in POLICIES:
                raise ConfigError(f"{where}.policy={policy!r}; expected one of {list(POLICIES)}")
            version = arm.get("model_version")
            if version is not None and (isinstance(version, bool) or not isinstance(version, str | int)):
                raise ConfigError(f"{where}.model_version={version!r}; expected a version of the repository, e.g. '2'")
            if version is not None and policy == "popularity":
                raise ConfigError(f"{where}: a popularity arm uses no model; remove model_version={version!r}")
            slots = arm.get("complement_slots")
            if slots is not None and (isinstance(slots, bool) or not isinstance(slots, int) or slots < 0):
                raise ConfigError(f"{where}.complement_slots={slots!r}; expected an integer >= 0")
            explore, pool = arm.get("explore", 0.0), arm.get("explore_pool", 20)
            if isinstance(explore, bool) or not isinstance(explore, int | float) or not 0 <= explore <= 1:
                raise ConfigError(f"{where}.explore={explore!r}; expected a probability in [0, 1]")
            if isinstance(pool, bool) or not isinstance(pool, int) or pool < 2:
                raise ConfigError(f"{where}.explore_pool={pool!r}; expected an integer of at least 2")
            if explore and policy == "popularity":
                raise ConfigError(f"{where}: exploration needs a model's ranking; a popularity arm cannot explore")
            version = None if version is None else str(version)
            arms.append(Arm(name.strip(), float(share), policy, version, slots, float(explore), int(pool)))
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ConfigError(f"{source}: arm names {names} repeat; give every arm its own name")
        total = sum(a.share for a in arms)
        if not math.isclose(total, 1.0, abs_tol=SHARE_TOLERANCE):
            raise ConfigError(
                f"{source}: the arms' shares {[a.share for a in arms]} sum to {total:g}; expected 1 "
                "(each share is the arm's part of the traffic)"
            )
        return cls(values["name"].strip(), values["salt"].strip(), tuple(arms))

    def as_dict(self) -> dict:
        return {"name": self.name, "salt": self.salt, "arms": [asdict(a) for a in self.arms]}

    def bucket(self, unit: str) -> float:
        """The unit's place in [0, 1): the first 8 bytes of SHA-256(salt, unit)."""
        digest = hashlib.sha256(f"{self.salt}\x00{unit}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def assign(self, unit: str) -> Arm:
        """The arm of `unit` (e.g. 'customer:c1'): deterministic, with the arms' shares."""
        point, edge = self.bucket(unit), 0.0
        for arm in self.arms:
            edge += arm.share
            if point < edge:
                return arm
        return self.arms[-1]  # rounding of the shares' sum

    def versions(self) -> set[str]:
        return {a.model_version for a in self.arms if a.model_version is not None}


def load_experiment(name_or_path: str | Path, conf_dir: Path | None = None) -> Experiment:
    """An experiment from `conf/experiment_ab/<name>.yaml` or a YAML file's path."""
    from omegaconf import OmegaConf

    from intentrec.paths import CONF_DIR

    path = Path(name_or_path)
    if not path.suffix:
        path = Path(conf_dir or CONF_DIR) / "experiment_ab" / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (Path(conf_dir or CONF_DIR) / "experiment_ab").glob("*.yaml"))
        raise ConfigError(f"experiment_ab={name_or_path!r}: no file {path}; expected a path or one of {known}")
    try:
        values = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as error:
        raise ConfigError(f"experiment_ab={path}: not valid YAML ({str(error).splitlines()[0]})") from None
    return Experiment.from_dict(values, str(path))


def check_registry(registry: Path, experiment: Experiment) -> None:
    """Refuse an experiment whose salt was used before with other arms or shares; record it otherwise.

    `registry` is a JSON file beside the repository (`experiments.json`): salt -> the arms it split."""
    registry = Path(registry)
    known = json.loads(registry.read_text()) if registry.is_file() else {}
    split = [[a.name, a.share] for a in experiment.arms]
    before = known.get(experiment.salt)
    if before is not None and before["arms"] != split:
        raise ConfigError(
            f"experiment {experiment.name!r}: salt {experiment.salt!r} already split traffic as {before['arms']} "
            f"(experiment {before['experiment']!r}); the arms now are {split}. Changing arms or shares under the same "
            "salt moves shoppers between arms mid-experiment: give the changed experiment a new salt "
            f"(recorded in {registry})"
        )
    if before is None:
        known[experiment.salt] = {"experiment": experiment.name, "arms": split}
        registry.parent.mkdir(parents=True, exist_ok=True)
        registry.write_text(json.dumps(known, indent=2) + "\n")


class Assign:
    """Stage: each decoded row's experiment arm, policy and rule variant (after decode, before encode).

    Rows of an arm served by another model version are marked `delegate`; the Recommender answers them
    with that version's recommender."""

    name = "assign"

    def __init__(self, experiment: Experiment | None, model_version: str | None, profiles=None):
        self.experiment = experiment
        self.model_version = model_version
        self.profiles = profiles

    def unit(self, query, row: Row) -> str | None:
        profile = row.info.get("profile") or {}
        if profile.get("customer_id"):
            return f"customer:{profile['customer_id']}"
        named = query.shopper or query.identity
        if not named:
            return None
        kind, value = identity_key("shopper" if query.shopper else "identity", named)
        if kind != "customer" and self.profiles is not None and self.profiles.store is not None:
            try:
                owner = self.profiles.owner(kind, value)
            except Exception:  # the store is down: the device's own arm until it answers again
                owner = None
                row.info["experiment_unit"] = "profile store unavailable: assigned by the device"
            if owner:
                return f"customer:{owner}"
        return f"{kind}:{value}"

    def run(self, batch: Batch) -> None:
        if self.experiment is None:
            return
        for position, (query, row) in enumerate(zip(batch.queries, batch.rows)):
            if not isinstance(row, Row):
                continue
            try:
                unit = self.unit(query, row)
            except RequestError as error:
                batch.rows[position] = error
                continue
            if unit is None:
                row.info["experiment_unit"] = "none: name the shopper (shopper or identity) to take part"
                continue
            arm = self.experiment.assign(unit)
            row.experiment, row.arm = self.experiment.name, arm.name
            if arm.model_version is not None and arm.model_version != self.model_version:
                row.delegate = arm.model_version
                row.model = False
                continue
            if arm.complement_slots is not None:
                row.complement_slots = arm.complement_slots
            if arm.explore > 0:
                row.explore = (arm.explore, arm.explore_pool)
            if arm.policy == "popularity":
                row.model = False
                row.info["policy"] = "popularity"
            elif arm.policy == "no_context":
                row.context = [0] * len(row.context)
                row.loyalty = 0
                row.past = row.past[:0]
                row.info["policy"] = "no_context"
