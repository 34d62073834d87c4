"""Experiment definitions read from a YAML or JSON file, validated, and reloaded on change.

File shape (YAML shown; JSON with the same keys works)::

    holdout: 0.05                 # global holdout: these users get the default pipeline, no experiment
    holdout_salt: global-holdout
    default_pipeline: {}          # optional: the pipeline of holdout users and users in no experiment
    experiments:
      - id: explore-slots-v1
        salt: explore-slots-v1
        layer: bandit             # experiments in one layer split its traffic without overlap
        traffic: 0.5              # share of the layer's (non-holdout) users in this experiment
        variants:
          - name: control
            weight: 1
            pipeline:
              ranker: multitask                    # multitask | ncf
              rerank: {enabled: true, model: sasrec}   # sasrec | gru4rec | bert4rec | "" (bundle default)
              bandit: {policy: thompson, slots: 1, segment_by: "attribute:device"}
                # policy thompson | linucb | lints | linucb-hybrid (what the bandit service serves);
                # segment_by none | top_genre | attribute:NAME: Thompson arms per user segment
              diversity: {method: mmr, lambda: 0.7, similarity: jaccard}
                # method mmr | dpp | none; lambda = relevance weight (MMR) / theta (DPP);
                # similarity jaccard (item genres) | cosine (two-tower item embeddings)
              multitask_weights: {click: 1.0, like: 0.5, purchase: 2.0}

Pipeline of a request (``ExperimentsConfig.resolve``): ``default_pipeline``, then, layer by layer
in file order, the fields that the user's variant sets explicitly (a variant that only sets
``bandit.slots`` changes nothing else, so experiments in different layers can vary different
parts of the chain; on a conflict the later layer wins).

Hashing (all through ``recstack.experiments.assignment.bucket``, uniform in [0, 1)):

- holdout: ``bucket(f"holdout:{holdout_salt}", user) < holdout``;
- layer slot: ``bucket(f"layer:{layer}", user)``; the layer's experiments own consecutive
  intervals of [0, 1) of width ``traffic`` in file order, so within a layer no user is in two
  experiments (traffic in a layer sums to at most 1);
- variant: ``assignment.assign`` with salt ``f"{layer}:{salt}"`` (``ExperimentConfig.hash_salt``;
  the layer is part of the salt, so experiments in different layers hash independently and do not
  collide). In the layer ``default`` the salt is used as is (e.g. ``DEFAULT_EXPERIMENT``).

Errors raise ``ExperimentConfigError`` (the class of ``recstack.experiments.assignment``) whose
message names the bad field, e.g. ``experiments[1].variants[0].pipeline.diversity.lambda: must be
between 0 and 1``. ``ConfigWatcher`` reloads the file when it changes and keeps the previous valid
configuration (with a logged error) when the new file is invalid.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from recstack.experiments import assignment
from recstack.experiments.assignment import ExperimentConfigError, bucket
from recstack.exploration import POLICIES, THOMPSON
from recstack.exploration.segments import parse_segment_by
from recstack.models import DEFAULT_RANKING_MODEL, RANKING_MODELS, RERANK_MODELS

__all__ = [
    "Assignment",
    "DEFAULT_EXPERIMENT",
    "ConfigWatcher",
    "ExperimentConfig",
    "ExperimentConfigError",
    "ExperimentsConfig",
    "PipelineSpec",
    "Resolution",
    "UnknownExperimentError",
    "load_experiments",
    "parse_experiments",
]

log = logging.getLogger(__name__)

DEFAULT_LAYER = "default"


class UnknownExperimentError(KeyError):
    """An experiment id that the configuration does not define."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


def _fraction(v: float) -> float:
    if not 0.0 <= v <= 1.0:
        raise ValueError("must be between 0 and 1")
    return v


def _non_negative(v: float) -> float:
    if v < 0:
        raise ValueError("must be >= 0")
    return v


def _ident(v: str) -> str:
    if not v or len(v) > 128 or not all(ch.isalnum() or ch in "_.-:" for ch in v):
        raise ValueError("must be 1..128 characters of letters, digits, '_', '.', '-', ':'")
    return v


Fraction = Annotated[float, AfterValidator(_fraction)]
NonNegative = Annotated[float, AfterValidator(_non_negative)]
Ident = Annotated[str, AfterValidator(_ident)]
SegmentBy = Annotated[str, AfterValidator(parse_segment_by)]
# The names come from the registries (recstack.models, recstack.exploration).
RankingModel = Literal[*RANKING_MODELS]
RerankModel = Literal["", *RERANK_MODELS]
Policy = Literal[*POLICIES]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RerankSpec(_Strict):
    """model "": the bundle's default re-ranker."""

    enabled: bool = True
    model: RerankModel = ""


class BanditSpec(_Strict):
    """policy: one the bandit service serves; slots: exploration positions (0: no bandit);
    segment_by: Thompson arms per user segment: "none" (default), "top_genre" (the user's highest
    real-time genre score) or "attribute:NAME" (the request's context attribute NAME); stored in
    canonical form ("" for none). The contextual policies ignore it."""

    policy: Policy = THOMPSON
    slots: Annotated[int, Field(ge=0, le=100)] = 1
    segment_by: SegmentBy = ""


class DiversitySpec(_Strict):
    """method: "mmr" (lambda = MMR relevance weight), "dpp" (lambda = theta, must be < 1), "none"."""

    method: Literal["mmr", "dpp", "none"] = "none"
    lam: Fraction = Field(0.7, alias="lambda")
    similarity: Literal["jaccard", "cosine"] = "jaccard"


class MultitaskWeights(_Strict):
    click: NonNegative = 1.0
    like: NonNegative = 0.0
    purchase: NonNegative = 0.0


class PipelineSpec(_Strict):
    """What a variant runs in the gateway chain."""

    ranker: RankingModel = DEFAULT_RANKING_MODEL
    rerank: RerankSpec = RerankSpec()
    bandit: BanditSpec = BanditSpec()
    diversity: DiversitySpec = DiversitySpec()
    multitask_weights: MultitaskWeights = MultitaskWeights()

    def to_assignment(self) -> assignment.PipelineConfig:
        """The chain's view. Task weights are passed on only when ``multitask_weights`` was set
        (else the ranking model's own defaults apply)."""
        weights: tuple[tuple[str, float], ...] = ()
        if "multitask_weights" in self.model_fields_set:
            weights = tuple(self.multitask_weights.model_dump().items())
        return assignment.PipelineConfig(
            ranking_model=self.ranker,
            rerank_model=self.rerank.model,
            explore_slots=self.bandit.slots,
            policy=self.bandit.policy,
            segment_by=self.bandit.segment_by,
            rerank_enabled=self.rerank.enabled,
            task_weights=weights,
            diversity=self.diversity.method,
            diversity_lambda=self.diversity.lam,
            diversity_similarity=self.diversity.similarity,
        )

    def overrides(self) -> dict[str, Any]:
        """The fields set explicitly (nested), for layering one pipeline over another."""
        return self.model_dump(exclude_unset=True)


class VariantSpec(_Strict):
    name: Ident
    weight: NonNegative = 1.0
    pipeline: PipelineSpec = PipelineSpec()


class ExperimentConfig(_Strict):
    id: Ident
    salt: Ident
    layer: Ident = DEFAULT_LAYER
    traffic: Fraction = 1.0
    variants: list[VariantSpec] = Field(min_length=1)

    @property
    def weights(self) -> dict[str, float]:
        """Variant name -> weight normalised to sum to 1 (the expected traffic split)."""
        total = sum(v.weight for v in self.variants)
        return {v.name: v.weight / total for v in self.variants}

    @property
    def control(self) -> str:
        """The reference variant of the statistics: "control" when present, else the first."""
        names = [v.name for v in self.variants]
        return "control" if "control" in names else names[0]

    def variant(self, name: str) -> VariantSpec:
        for v in self.variants:
            if v.name == name:
                return v
        raise assignment.UnknownVariantError(
            f"variant {name[:80]!r} is not a variant of experiment {self.id!r}; "
            f"use one of {[v.name for v in self.variants]}"
        )

    @property
    def hash_salt(self) -> str:
        """The salt ``assignment.assign`` hashes with: includes the layer (except in layer "default")."""
        return self.salt if self.layer == DEFAULT_LAYER else f"{self.layer}:{self.salt}"


DEFAULT_EXPERIMENT = ExperimentConfig.model_validate(
    {
        "id": "explore-slots-v1",
        "salt": "explore-slots-v1",
        "variants": [
            {"name": "control", "weight": 0.5, "pipeline": {"bandit": {"slots": 1}}},
            {"name": "treatment", "weight": 0.5, "pipeline": {"bandit": {"slots": 2}}},
        ],
    }
)
"""The experiment the gateway runs until experiments are configured outside the code:
treatment opens two bandit slots instead of one."""


@dataclass(frozen=True)
class Assignment:
    """One experiment a user is in: its id, layer, the variant and the variant's pipeline."""

    experiment_id: str
    layer: str
    variant: str
    pipeline: PipelineSpec


@dataclass(frozen=True)
class Resolution:
    """What one request runs: its assignments (one per layer at most), the merged pipeline,
    whether the user is in the global holdout and whether a QA override (force_variant) was used."""

    assignments: tuple[Assignment, ...]
    pipeline: assignment.PipelineConfig
    holdout: bool = False
    qa: bool = False

    @property
    def primary(self) -> Assignment | None:
        """The first assignment (file order of the layers): reply's ``variant`` and the
        impression's experiment_id / variant."""
        return self.assignments[0] if self.assignments else None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class ExperimentsConfig(_Strict):
    holdout: Fraction = 0.0
    holdout_salt: Ident = "global-holdout"
    default_pipeline: PipelineSpec = PipelineSpec()
    experiments: list[ExperimentConfig] = Field(default_factory=list)

    @classmethod
    def builtin(cls) -> ExperimentsConfig:
        """The gateway's configuration without an experiments file: ``DEFAULT_EXPERIMENT`` on all
        traffic (hashes exactly as ``assignment.assign(DEFAULT_EXPERIMENT, user)``)."""
        return cls(experiments=[DEFAULT_EXPERIMENT])

    def get(self, experiment_id: str) -> ExperimentConfig:
        for exp in self.experiments:
            if exp.id == experiment_id:
                return exp
        raise UnknownExperimentError(
            f"unknown experiment {experiment_id!r}; configured: {[e.id for e in self.experiments]}"
        )

    def layers(self) -> dict[str, list[ExperimentConfig]]:
        out: dict[str, list[ExperimentConfig]] = {}
        for exp in self.experiments:
            out.setdefault(exp.layer, []).append(exp)
        return out

    def in_holdout(self, user_id: str) -> bool:
        return bucket(f"holdout:{self.holdout_salt}", user_id) < self.holdout

    def assign(self, user_id: str) -> list[Assignment]:
        """The user's experiments, at most one per layer (none for holdout users)."""
        if self.in_holdout(user_id):
            return []
        out = []
        for layer, exps in self.layers().items():
            point = bucket(f"layer:{layer}", user_id)
            start = 0.0
            for exp in exps:
                if start <= point < start + exp.traffic:
                    v = assignment.assign(exp, user_id)
                    out.append(Assignment(exp.id, layer, v.name, exp.variant(v.name).pipeline))
                    break
                start += exp.traffic
        return out

    def forced(self, force_variant: str) -> tuple[ExperimentConfig, str]:
        """The (experiment, variant) a QA override names: ``EXPERIMENT/VARIANT``, or a bare
        ``VARIANT`` for the first experiment (file order) that has it. Raises UnknownVariantError."""
        if "/" in force_variant:
            exp_id, _, name = force_variant.partition("/")
            exp = next((e for e in self.experiments if e.id == exp_id), None)
            if exp is None:
                raise assignment.UnknownVariantError(
                    f"force_variant {force_variant[:160]!r}: unknown experiment {exp_id[:80]!r}; "
                    f"configured: {[e.id for e in self.experiments]}"
                )
            exp.variant(name)  # raises UnknownVariantError naming the variants
            return exp, name
        for exp in self.experiments:
            if any(v.name == force_variant for v in exp.variants):
                return exp, force_variant
        options = sorted({f"{e.id}/{v.name}" for e in self.experiments for v in e.variants})
        raise assignment.UnknownVariantError(
            f"force_variant {force_variant[:160]!r} is not a variant of any configured experiment; "
            f"use one of {options} (or the bare variant name)"
        )

    def resolve(self, user_id: str, force_variant: str = "") -> Resolution:
        """Assignments and merged pipeline of one request (see the module docstring).

        A ``force_variant`` puts the user in that variant of its experiment whatever the hash and
        the holdout say (other layers are assigned as usual unless the user is held out); the
        request is flagged ``qa`` so that it is left out of the analysis."""
        holdout = self.in_holdout(user_id)
        assigned = self.assign(user_id)
        if force_variant:
            exp, name = self.forced(force_variant)
            forced = Assignment(exp.id, exp.layer, name, exp.variant(name).pipeline)
            assigned = [forced] + [a for a in assigned if a.layer != exp.layer]
            order = list(self.layers())
            assigned.sort(key=lambda a: order.index(a.layer))
        merged = self.default_pipeline.overrides()
        for a in assigned:
            merged = _merge(merged, a.pipeline.overrides())
        pipeline = PipelineSpec.model_validate(merged).to_assignment()
        return Resolution(tuple(assigned), pipeline, holdout=holdout, qa=bool(force_variant))


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _message(err: dict[str, Any]) -> str:
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling)"
    return msg


def _check(cfg: ExperimentsConfig) -> list[str]:
    """Rules that span fields: unique ids, unique variant names, weights, traffic per layer."""
    errors: list[str] = []
    seen: dict[str, int] = {}
    for i, exp in enumerate(cfg.experiments):
        if exp.id in seen:
            errors.append(
                f"experiments[{i}].id: duplicate experiment id {exp.id!r} (also experiments[{seen[exp.id]}])"
            )
        seen.setdefault(exp.id, i)
        names: dict[str, int] = {}
        for j, v in enumerate(exp.variants):
            if v.name in names:
                errors.append(f"experiments[{i}].variants[{j}].name: duplicate variant {v.name!r}")
            names.setdefault(v.name, j)
        if sum(v.weight for v in exp.variants) <= 0:
            errors.append(f"experiments[{i}].variants: weights must have a positive sum")
        for j, v in enumerate(exp.variants):
            if v.pipeline.diversity.method == "dpp" and v.pipeline.diversity.lam >= 1.0:
                errors.append(
                    f"experiments[{i}].variants[{j}].pipeline.diversity.lambda: "
                    "must be < 1 for dpp (it is theta in [0, 1))"
                )
    totals: dict[str, float] = {}
    for i, exp in enumerate(cfg.experiments):
        totals[exp.layer] = totals.get(exp.layer, 0.0) + exp.traffic
        if totals[exp.layer] > 1.0 + 1e-9:
            errors.append(
                f"experiments[{i}].traffic: layer {exp.layer!r} traffic sums to "
                f"{totals[exp.layer]:g} > 1 (experiments in one layer must not overlap)"
            )
    return errors


def parse_experiments(data: Any, source: str = "<config>") -> ExperimentsConfig:
    """Validate already-parsed YAML/JSON data; raises ExperimentConfigError naming every bad field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ExperimentConfigError(f"{source}: the top level must be a mapping with 'experiments'")
    try:
        cfg = ExperimentsConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{_path(e['loc'])}: {_message(e)}" for e in exc.errors()]
        raise ExperimentConfigError(f"{source}: " + "; ".join(lines)) from None
    errors = _check(cfg)
    if errors:
        raise ExperimentConfigError(f"{source}: " + "; ".join(errors))
    return cfg


def load_experiments(path: str | Path) -> ExperimentsConfig:
    """Read and validate an experiments file (.json as JSON, anything else as YAML)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExperimentConfigError(f"{p}: experiments file not found") from None
    except OSError as exc:
        raise ExperimentConfigError(f"{p}: cannot read the experiments file: {exc}") from None
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ExperimentConfigError(
            f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    return parse_experiments(data, str(p))


class ConfigWatcher:
    """Holds the current experiments configuration and reloads it when the file changes.

    The first load must succeed (raises ExperimentConfigError). Later, ``current()`` checks the
    file's (mtime_ns, size) at most every ``interval_s`` seconds; a changed but invalid file is
    logged and ``last_error`` is set, and the previous valid configuration stays in force.
    ``on_change`` is called with each newly loaded configuration.
    """

    def __init__(
        self,
        path: str | Path,
        interval_s: float = 1.0,
        on_change: Callable[[ExperimentsConfig], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._config = load_experiments(self.path)
        self._checked = clock()
        self.last_error: str | None = None

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    @property
    def config(self) -> ExperimentsConfig:
        """The configuration in force, without checking the file."""
        return self._config

    def current(self) -> ExperimentsConfig:
        """The configuration in force (reloading first when due and the file changed)."""
        if self._clock() - self._checked >= self.interval_s:
            self.reload()
        return self._config

    def reload(self, force: bool = False) -> bool:
        """Check the file now; True when a new configuration was loaded."""
        with self._lock:
            self._checked = self._clock()
            stamp = self._stat()
            if stamp == self._stamp and not force:
                return False
            self._stamp = stamp
            try:
                new = load_experiments(self.path)
            except ExperimentConfigError as exc:
                self.last_error = str(exc)
                log.error("experiments config not reloaded, keeping the previous one: %s", exc)
                return False
            self._config = new
            self.last_error = None
        log.info("experiments config reloaded from %s (%d experiments)", self.path, len(new.experiments))
        if self.on_change is not None:
            self.on_change(new)
        return True
