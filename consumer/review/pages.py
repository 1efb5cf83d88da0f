"""The page's HTML: Jinja2 templates with autoescaping on, and the view of one item.

Everything shown comes from events and decisions — metadata, ids, category names — so none
of it is trusted: every value goes through the template's escaping, none is marked safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import jinja2
from starlette.responses import HTMLResponse

from consumer.contract.events import Decision, Reason
from consumer.moderation.decide import EXEMPLAR_RULE
from consumer.moderation.policy import TenantRules
from consumer.review.auth import Reviewer
from consumer.review.verdicts import Leaning, leaning

# Digit keys name categories: nine at most.
MAX_VERDICT_CATEGORIES = 9


@dataclass(frozen=True)
class ScoreRow:
    category: str
    score: float
    review_at: float | None
    block_at: float | None


@dataclass(frozen=True)
class ItemView:
    decision: Decision
    scores: list[ScoreRow]
    reasons: list[Reason]
    bank_matches: list[Reason]
    leaning: Leaning
    verdict_categories: list[str]
    """Categories a block may name: those the tenant's policy thresholds and the model scored."""
    heat_categories: list[str]
    heat_default: str | None


def item_view(decision: Decision, rules: TenantRules, heat_categories: list[str]) -> ItemView:
    rows = [
        ScoreRow(
            category,
            score,
            rules.thresholds[category].review if category in rules.thresholds else None,
            rules.thresholds[category].block if category in rules.thresholds else None,
        )
        for category, score in sorted(decision.scores.items(), key=lambda item: -item[1])
    ]
    lean = leaning(decision)
    heat = [category for category in decision.scores if category in heat_categories]
    default: str | None
    if lean.category in heat:
        default = lean.category
    else:
        default = next((row.category for row in rows if row.category in heat), None)
    return ItemView(
        decision=decision,
        scores=rows,
        reasons=list(decision.reasons),
        bank_matches=[r for r in decision.reasons if r.rule == EXEMPLAR_RULE],
        leaning=lean,
        verdict_categories=verdict_categories(decision, rules, lean),
        heat_categories=heat,
        heat_default=default,
    )


def verdict_categories(
    decision: Decision, rules: TenantRules, lean: Leaning | None = None
) -> list[str]:
    """What a block may name: the categories the tenant's policy thresholds that the model
    scored. Key 1 is the one the model suspected; the others follow by score."""
    lean = lean or leaning(decision)
    thresholded = [
        category
        for category, threshold in rules.thresholds.items()
        if category in decision.scores
        and (threshold.review is not None or threshold.block is not None)
    ]
    thresholded.sort(key=lambda c: (c != lean.category, -decision.scores[c], c))
    return thresholded[:MAX_VERDICT_CATEGORIES]


def age(now: datetime, then: datetime) -> str:
    """A short human age: 45s, 12m, 3h, 2d."""
    return duration((now - then).total_seconds())


def duration(seconds_float: float) -> str:
    seconds = max(0, int(seconds_float))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class Pages:
    def __init__(self, queue_page_size: int = 100) -> None:
        self.queue_page_size = queue_page_size
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("consumer.review", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._env.globals["age"] = age
        self._env.globals["duration"] = duration

    def render(
        self, template: str, *, reviewer: Reviewer, csrf: str, **context: object
    ) -> HTMLResponse:
        html = self._env.get_template(template).render(reviewer=reviewer, csrf=csrf, **context)
        return HTMLResponse(html)

    def login(self, message: str | None, *, status: int) -> HTMLResponse:
        html = self._env.get_template("login.html").render(message=message)
        return HTMLResponse(html, status_code=status)

    def error(self, status: int, message: str) -> HTMLResponse:
        html = self._env.get_template("error.html").render(status=status, message=message)
        return HTMLResponse(html, status_code=status)
