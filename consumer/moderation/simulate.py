"""``modstream policy simulate``: what a candidate policy would do, before it is rolled out.

Input is scored events: JSON lines with ``tenant_id`` and ``scores`` (decisions read back from
the decision topics have both, so past traffic can be replayed under a new policy), optionally
``label``, the action a person says is right. With the heads-shadow topic's comparisons, the
events are replayed with a candidate heads version's scores instead of the live ones. Output:
the action distribution per tenant; with labels, precision and recall per action and a sweep
(PNG) of one category's block threshold.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consumer.contract.events import Action, ShadowComparison, TenantId
from consumer.errors import ConfigError
from consumer.moderation.decide import untrusted_label
from consumer.moderation.policy import PolicySet, Threshold, threshold_verdict

ACTIONS = tuple(action.value for action in Action)


class ScoredEvent(BaseModel):
    """One line of the events file (extra fields, e.g. a whole Decision, are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: str | None = None
    tenant_id: TenantId
    scores: dict[str, float]
    prototype_similarity: float | None = Field(
        default=None, description="as decisions carry it; enables the prototype check"
    )
    label: Action | None = Field(default=None, description="the right action, when known")


@dataclass
class Simulation:
    by_tenant: dict[str, Counter[str]] = field(default_factory=dict)
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(label, predicted) counts for labelled events."""

    def add(self, tenant: str, predicted: str, label: str | None) -> None:
        self.by_tenant.setdefault(tenant, Counter())[predicted] += 1
        if label is not None:
            self.confusion[(label, predicted)] += 1

    def precision_recall(self) -> dict[str, tuple[float | None, float | None]]:
        result: dict[str, tuple[float | None, float | None]] = {}
        for action in ACTIONS:
            predicted = sum(n for (_, p), n in self.confusion.items() if p == action)
            actual = sum(n for (lab, _), n in self.confusion.items() if lab == action)
            hits = self.confusion[(action, action)]
            result[action] = (
                hits / predicted if predicted else None,
                hits / actual if actual else None,
            )
        return result

    def render(self) -> str:
        lines = [f"{'tenant':<20}" + "".join(f"{a:>10}" for a in ACTIONS) + f"{'total':>10}"]
        for tenant in sorted(self.by_tenant):
            counts = self.by_tenant[tenant]
            lines.append(
                f"{tenant:<20}"
                + "".join(f"{counts[a]:>10}" for a in ACTIONS)
                + f"{sum(counts.values()):>10}"
            )
        if self.confusion:
            lines.append("")
            lines.append(f"{'action':<10}{'precision':>11}{'recall':>9}")
            for action, (precision, recall) in self.precision_recall().items():
                lines.append(f"{action:<10}{_pct(precision):>11}{_pct(recall):>9}")
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def read_events(path: Path) -> list[ScoredEvent]:
    """Parse the events file; ConfigError names the line that is wrong."""
    events = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read events file {path}: {exc.strerror}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(ScoredEvent.model_validate_json(line))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "(line)"
            raise ConfigError(f"{path}:{number}: {where}: {first['msg']}") from exc
    if not events:
        raise ConfigError(f"{path} holds no events")
    return events


def with_candidate_heads(
    events: Sequence[ScoredEvent], comparisons: Iterable[ShadowComparison]
) -> tuple[list[ScoredEvent], frozenset[str]]:
    """The events as a candidate heads version would have scored them (from the heads-shadow
    topic, matched by event id), and every head category seen (live or candidate).

    Events the shadow did not compare keep their scores.
    """
    by_id = {c.event_id: c for c in comparisons}
    heads: set[str] = set()
    for seen in by_id.values():
        heads.update(seen.live_head_scores, seen.shadow_scores)
    replayed = []
    for event in events:
        comparison = by_id.get(event.event_id or "")
        if comparison is None:
            replayed.append(event)
            continue
        builtin = {k: v for k, v in event.scores.items() if k not in comparison.live_head_scores}
        scores = {**builtin, **comparison.shadow_scores}
        replayed.append(event.model_copy(update={"scores": scores}))
    return replayed, frozenset(heads)


def read_comparisons(path: Path) -> list[ShadowComparison]:
    """Parse a dump of the heads-shadow topic (JSON lines); ConfigError names a bad line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read shadow comparisons {path}: {exc.strerror}") from exc
    comparisons = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                comparisons.append(ShadowComparison.model_validate_json(line))
            except ValidationError as exc:
                raise ConfigError(f"{path}:{number}: not a shadow comparison: {exc}") from exc
    return comparisons


def simulate(
    policies: PolicySet, events: Iterable[ScoredEvent], heads: frozenset[str] = frozenset()
) -> Simulation:
    """Decide every event as the consumer would from its scores (the pool and bank rules
    need the images and are not replayed). ``heads`` names head categories, which never
    count as the model's predicted class (as in the consumer)."""
    result = Simulation()
    for event in events:
        rules = policies.rules_for(event.tenant_id)
        action = threshold_verdict(rules, event.scores).action
        if action is Action.ALLOW:
            builtin = {k: v for k, v in event.scores.items() if k not in heads}
            predicted = max(builtin, key=builtin.__getitem__)
            if untrusted_label(rules, predicted, event.prototype_similarity, None):
                action = Action.REVIEW
        label = event.label.value if event.label is not None else None
        result.add(event.tenant_id, action.value, label)
    return result


@dataclass(frozen=True)
class SweepPoint:
    threshold: float
    precision: float | None
    recall: float | None


def sweep_block(
    policies: PolicySet, events: Sequence[ScoredEvent], category: str, steps: int = 100
) -> list[SweepPoint]:
    """Precision and recall of ``block`` as every tenant's block threshold on ``category``
    moves from 0 to 1, all other rules as they are."""
    labelled = [e for e in events if e.label is not None]
    if not labelled:
        raise ConfigError("a threshold sweep needs labelled events (a `label` on each line)")
    points = []
    for step in range(steps + 1):
        threshold = step / steps
        blocked = hits = 0
        for event in labelled:
            rules = policies.rules_for(event.tenant_id)
            current = rules.thresholds.get(category, Threshold(None, None))
            swept = {**rules.thresholds, category: Threshold(current.review, threshold)}
            if current.review is not None and current.review > threshold:
                swept[category] = Threshold(None, threshold)
            action = threshold_verdict(replace(rules, thresholds=swept), event.scores).action
            if action is Action.BLOCK:
                blocked += 1
                hits += event.label is Action.BLOCK
        actual = sum(e.label is Action.BLOCK for e in labelled)
        points.append(
            SweepPoint(
                threshold,
                hits / blocked if blocked else None,
                hits / actual if actual else None,
            )
        )
    return points


def best_f1(points: Sequence[SweepPoint]) -> SweepPoint | None:
    """The sweep point with the highest F1 of block, if any has both numbers."""
    best: SweepPoint | None = None
    best_score = -1.0
    for point in points:
        if point.precision is None or point.recall is None:
            continue
        total = point.precision + point.recall
        score = 2 * point.precision * point.recall / total if total else 0.0
        if score > best_score:
            best, best_score = point, score
    return best


def plot_sweep(points: Sequence[SweepPoint], category: str, out: Path) -> None:
    """A small line chart: precision and recall of block against the threshold."""
    width, height, margin = 640, 400, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = margin, margin // 2, width - margin // 2, height - margin
    draw.rectangle((left, top, right, bottom), outline="black")
    for tick in range(0, 11, 2):
        x = left + (right - left) * tick / 10
        y = bottom - (bottom - top) * tick / 10
        draw.line((x, bottom, x, bottom + 4), fill="black")
        draw.text((x - 8, bottom + 8), f"{tick / 10:.1f}", fill="black")
        draw.line((left - 4, y, left, y), fill="black")
        draw.text((left - 30, y - 6), f"{tick / 10:.1f}", fill="black")
    draw.text((left, bottom + 24), f"block threshold on {category}", fill="black")
    for name, colour in (("precision", (31, 119, 180)), ("recall", (214, 39, 40))):
        coords = [
            (left + (right - left) * p.threshold, bottom - (bottom - top) * value)
            for p in points
            if (value := getattr(p, name)) is not None
        ]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=2)
        draw.text((right - 90, top + (10 if name == "precision" else 26)), name, fill=colour)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")


def write_json(simulation: Simulation, points: Sequence[SweepPoint] | None, out: Path) -> None:
    report = {
        "by_tenant": {t: dict(c) for t, c in simulation.by_tenant.items()},
        "precision_recall": {
            a: {"precision": p, "recall": r} for a, (p, r) in simulation.precision_recall().items()
        }
        if simulation.confusion
        else None,
        "sweep": [vars(p) for p in points] if points else None,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
