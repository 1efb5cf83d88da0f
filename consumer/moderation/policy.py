"""Tenant policies: load and validate the YAML file, then ``threshold_verdict()`` from scores.

A policy file holds a ``default`` policy and per-tenant overrides. A tenant override changes
single fields: ``{sexual_explicit: {block: 0.6}}`` keeps the default ``review`` threshold
for ``sexual_explicit``; an explicit ``null`` switches a threshold off. ``block`` wins over
``review`` over ``allow``.

``prototype_check`` maps a category to the least cosine similarity an image's embedding must
have to that category's prototype (the mean embedding of labelled examples, shipped with the
model version) for the model's label to be trusted; an ``allow`` below it becomes ``review``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from consumer.contract.events import Action, Reason, TenantId
from consumer.errors import PolicyError

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
TopicName = Annotated[
    str, StringConstraints(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
]

THRESHOLD_RULE = "category_threshold"
Similarity = Annotated[float, Field(ge=-1.0, le=1.0)]


class ThresholdSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    review: Probability | None = None
    block: Probability | None = None

    @model_validator(mode="after")
    def _review_not_above_block(self) -> Self:
        if self.review is not None and self.block is not None and self.review > self.block:
            raise ValueError(
                f"review threshold {self.review} is above block threshold {self.block}"
            )
        return self


class TopicOverrides(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: TopicName | None = None
    review: TopicName | None = None
    block: TopicName | None = None


class ExemplarSpec(BaseModel):
    """How close an image must be to a bank entry to count as that entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # PDQ Hamming distance; 31 is what Meta's Hasher-Matcher-Actioner treats as a match.
    max_pdq_distance: Annotated[int, Field(ge=0, le=128)] | None = 31
    min_similarity: Annotated[float, Field(ge=-1.0, le=1.0)] | None = 0.97


DEFAULT_EXEMPLARS = ExemplarSpec()


class TenantPolicySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    thresholds: dict[str, ThresholdSpec] = Field(default_factory=dict)
    topics: TopicOverrides = TopicOverrides()
    exemplars: ExemplarSpec | None = None
    # Review an allowed image when the pool's mean prediction is this uncertain (entropy in
    # nats, 0..ln 5); needs MODSTREAM_TRITON__POOL_MODELS. Null turns it off.
    pool_max_entropy: Annotated[float, Field(gt=0.0)] | None = None
    # Category -> least cosine similarity to the category's prototype for an allow to stand
    # when the model labels an image with that category; null switches one off.
    prototype_check: dict[str, Similarity | None] = Field(default_factory=dict)


class PolicyFile(BaseModel):
    """The YAML document, as validated at the edge."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: TenantPolicySpec
    tenants: dict[TenantId, TenantPolicySpec] = Field(default_factory=dict)


@dataclass(frozen=True)
class Threshold:
    review: float | None
    block: float | None


@dataclass(frozen=True)
class TopicRoutes:
    allow: str
    review: str
    block: str

    def for_action(self, action: Action) -> str:
        return {Action.ALLOW: self.allow, Action.REVIEW: self.review, Action.BLOCK: self.block}[
            action
        ]


@dataclass(frozen=True)
class ModelCategories:
    """What the served model gives policies to name: its categories, and those with a prototype."""

    classes: tuple[str, ...]
    prototypes: tuple[str, ...] = ()
    heads: Mapping[str, str | None] = field(default_factory=dict)
    """Categories the served heads add, each with its tenant (None: the platform's)."""

    def nameable_by(self, tenant_id: str | None) -> set[str]:
        """The categories a tenant's rules (None: the default policy's) may threshold."""
        own = {name for name, owner in self.heads.items() if owner is None or owner == tenant_id}
        return set(self.classes) | own


@dataclass(frozen=True)
class TenantRules:
    thresholds: Mapping[str, Threshold]
    topics: TopicRoutes
    exemplars: ExemplarSpec = DEFAULT_EXEMPLARS
    pool_max_entropy: float | None = None
    prototype_minimums: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    action: Action
    reasons: tuple[Reason, ...]


@dataclass(frozen=True)
class PolicySet:
    """The compiled policies: effective rules for every named tenant plus the default."""

    version: str
    default: TenantRules
    tenants: Mapping[str, TenantRules]

    def rules_for(self, tenant_id: str) -> TenantRules:
        return self.tenants.get(tenant_id, self.default)

    def verdict(self, tenant_id: str, scores: Mapping[str, float]) -> Verdict:
        """The thresholds' verdict for a tenant (no banks, prototypes or pool: see decide_event)."""
        return threshold_verdict(self.rules_for(tenant_id), scores)

    def check_categories(self, known: Iterable[str]) -> None:
        """Raise PolicyError if a rule names a category the model does not produce."""
        known_set = set(known)
        named: set[str] = set()
        for rules in self._all_rules():
            named.update(rules.thresholds)
            named.update(rules.prototype_minimums)
        unknown = sorted(named - known_set)
        if unknown:
            raise PolicyError(
                f"policy names categories the model does not produce: {', '.join(unknown)}; "
                f"use one of: {', '.join(sorted(known_set))}"
            )

    def check_model(self, model: ModelCategories) -> None:
        """Raise PolicyError if a rule needs something the served model does not give.

        A tenant's own heads are nameable by that tenant alone; platform heads by everyone.
        """
        self.check_categories([*model.classes, *model.heads])
        for tenant, rules in [(None, self.default), *self.tenants.items()]:
            foreign = sorted(
                (set(rules.thresholds) | set(rules.prototype_minimums)) - model.nameable_by(tenant)
            )
            if foreign:
                who = f"tenant {tenant}" if tenant else "the default policy"
                owners = ", ".join(
                    f"{name} belongs to tenant {model.heads[name]}" for name in foreign
                )
                raise PolicyError(
                    f"{who} names heads of another tenant ({owners}); a tenant's heads apply to "
                    "that tenant only: move the thresholds under the owning tenant"
                )
        checked: set[str] = set()
        for rules in self._all_rules():
            checked.update(rules.prototype_minimums)
        missing = sorted(checked - set(model.prototypes))
        if missing:
            have = ", ".join(model.prototypes) or "none"
            raise PolicyError(
                f"prototype_check names {', '.join(missing)}, but the served model has "
                f"prototypes for: {have}; export the model with labelled examples of those "
                "categories (python -m training.nsfwjs.export --labelled DIR) or drop them"
            )

    def _all_rules(self) -> list[TenantRules]:
        return [self.default, *self.tenants.values()]


def threshold_verdict(rules: TenantRules, scores: Mapping[str, float]) -> Verdict:
    """Pick the most severe action any category threshold reaches; ties go to block."""
    reasons: list[Reason] = []
    for category, threshold in rules.thresholds.items():
        score = scores.get(category)
        if score is None:
            continue
        if threshold.block is not None and score >= threshold.block:
            reasons.append(_reason(Action.BLOCK, category, score, threshold.block))
        elif threshold.review is not None and score >= threshold.review:
            reasons.append(_reason(Action.REVIEW, category, score, threshold.review))
    if not reasons:
        return Verdict(Action.ALLOW, ())
    reasons.sort(key=lambda r: (-r.action.severity, -(r.score or 0.0)))
    return Verdict(reasons[0].action, tuple(reasons))


def _reason(action: Action, category: str, score: float, threshold: float) -> Reason:
    return Reason(
        rule=THRESHOLD_RULE, action=action, category=category, score=score, threshold=threshold
    )


def compile_policy(document: PolicyFile, base_topics: TopicRoutes) -> PolicySet:
    """Resolve tenant overrides against the default and the deployment's topics."""
    default = _compile_one(document.default, TenantRules({}, base_topics))
    tenants = {tenant: _compile_one(spec, default) for tenant, spec in document.tenants.items()}
    return PolicySet(version=policy_version(document), default=default, tenants=tenants)


def _compile_one(spec: TenantPolicySpec, inherited: TenantRules) -> TenantRules:
    """Apply one policy's fields over the rules it inherits (the default's, or none)."""
    topics = inherited.topics
    exemplars = inherited.exemplars
    thresholds = dict(inherited.thresholds)
    for category, override in spec.thresholds.items():
        base = thresholds.get(category, Threshold(None, None))
        fields = override.model_fields_set
        review = override.review if "review" in fields else base.review
        block = override.block if "block" in fields else base.block
        if review is not None and block is not None and review > block:
            raise PolicyError(
                f"category {category!r}: review threshold {review} ends up above block "
                f"threshold {block} after applying the tenant override; set both"
            )
        thresholds[category] = Threshold(review=review, block=block)
    routes = TopicRoutes(
        allow=spec.topics.allow or topics.allow,
        review=spec.topics.review or topics.review,
        block=spec.topics.block or topics.block,
    )
    if spec.exemplars is not None:
        fields = spec.exemplars.model_fields_set
        exemplars = exemplars.model_copy(
            update={name: getattr(spec.exemplars, name) for name in fields}
        )
    pool_max_entropy = (
        spec.pool_max_entropy
        if "pool_max_entropy" in spec.model_fields_set
        else inherited.pool_max_entropy
    )
    prototype_minimums = {**inherited.prototype_minimums, **spec.prototype_check}
    return TenantRules(
        thresholds=thresholds,
        topics=routes,
        exemplars=exemplars,
        pool_max_entropy=pool_max_entropy,
        prototype_minimums={k: v for k, v in prototype_minimums.items() if v is not None},
    )


def policy_version(document: PolicyFile) -> str:
    """A content hash: the same rules always give the same version, whatever the YAML layout."""
    canonical = json.dumps(document.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def parse_policy(text: str, source: str) -> PolicyFile:
    """Parse and validate a policy document; PolicyError names the file, field and value."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from exc
    try:
        return PolicyFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        value = first.get("input")
        raise PolicyError(
            f"{source}: {where}: {first['msg']} (got {value!r}); "
            f"{exc.error_count()} problem(s) in total"
        ) from exc


def read_policy_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from exc


def load_policy(path: Path, base_topics: TopicRoutes) -> PolicySet:
    """Read, validate and compile a policy file."""
    return compile_policy(parse_policy(read_policy_text(path), str(path)), base_topics)


def describe(policies: PolicySet) -> str:
    """A human-readable table of the effective rules per tenant, for ``modstream policy check``."""
    lines = [f"policy version {policies.version}"]
    named: list[tuple[str, TenantRules]] = [("(default)", policies.default)]
    named.extend(sorted(policies.tenants.items()))
    for tenant, rules in named:
        lines.append("")
        lines.append(f"tenant {tenant}")
        lines.append(
            f"  topics: allow -> {rules.topics.allow}, review -> {rules.topics.review}, "
            f"block -> {rules.topics.block}"
        )
        if not rules.thresholds:
            lines.append("  no thresholds: every image is allowed")
        for category, threshold in sorted(rules.thresholds.items()):
            lines.append(
                f"  {category:<24} review if >= {_fmt(threshold.review):<6} "
                f"block if >= {_fmt(threshold.block)}"
            )
        for category, minimum in sorted(rules.prototype_minimums.items()):
            lines.append(
                f"  {category:<24} labelled so: review if prototype similarity < {minimum:.2f}"
            )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"
