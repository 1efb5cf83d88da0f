"""One item's routes: its page, its image, its heat maps and its verdict.

Items are named in URLs by ``item_key`` (base64url of the event id), never by the event id
itself, and found only in the tenant's own queue. CPU work (decoding, heat maps) runs in
threads behind small semaphores, so a burst of requests queues instead of starving the page.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from consumer.contract.events import Action, Decision, ReviewClaim
from consumer.errors import ConfigError, DeliveryError
from consumer.review.access import CSRF_FIELD
from consumer.review.auth import Reviewer
from consumer.review.pages import item_view, verdict_categories
from consumer.review.queue import QueueEntry, event_id_of, item_key
from consumer.review.records import RecordUnavailable
from consumer.review.render import Shown, display_jpeg, prepare, saliency_jpeg
from consumer.review.saliency import SaliencyUnavailable
from consumer.review.state import NotFound, Review, field_of, render
from consumer.review.verdicts import LabelNotRecorded, VerdictChoice

logger = logging.getLogger(__name__)


async def item_page(request: Request, review: Review, reviewer: Reviewer) -> Response:
    entry = entry_of(request, review)
    decision = await decision_of(review, entry)
    tenant = entry.tenant_id
    position = review.queue.position(tenant, entry.event_id)
    if position is None:  # settled by a verdict read while the decision was being read
        raise NotFound()
    previous, following = review.queue.neighbours(tenant, entry.event_id)
    now = datetime.now(UTC)
    holder = review.queue.claimant(tenant, entry.event_id, now)
    if holder is None or holder.reviewer_id == reviewer.id:
        # Opening an item (again) claims it, so other reviewers are sent elsewhere.
        claim = ReviewClaim(
            event_id=entry.event_id,
            tenant_id=tenant,
            reviewer_id=reviewer.id,
            expires_at=now + timedelta(seconds=review.claim_s),
        )
        review.queue.claim(claim)
        await review.publisher.publish_claim(claim)
        holder = None
    heat = await asyncio.to_thread(_heat_categories, review, decision)
    return render(
        review,
        reviewer,
        "item.html",
        tenant=tenant,
        key=item_key(entry.event_id),
        item=item_view(decision, review.policies.current.rules_for(tenant), heat),
        previous=item_key(previous) if previous is not None else None,
        following=item_key(following) if following is not None else None,
        position=position + 1,
        total=review.queue.depth(tenant),
        now=now,
        holder=holder,
    )


def _heat_categories(review: Review, decision: Decision) -> list[str]:
    """What a heat map can be asked for; none when this item's model or heads are not the
    page's (a heads version missing from the repository, trained on another backbone …)."""
    model = review.saliency
    if model is None or not model.explains(decision.model.name):
        return []
    try:
        return model.categories(decision.model.heads_version)
    except SaliencyUnavailable as exc:
        logger.warning(
            "no heat maps for this item: %s",
            exc,
            extra={"event_id": decision.event_id, "tenant": decision.tenant_id},
        )
        return []


async def image(request: Request, review: Review, reviewer: Reviewer) -> Response:
    entry = entry_of(request, review)
    try:
        shown = await _shown(review, entry, await decision_of(review, entry))
        async with review.decode_slots:
            body = await asyncio.to_thread(display_jpeg, shown)
    except RecordUnavailable as exc:
        return review.pages.error(404, str(exc))
    return Response(body, media_type="image/jpeg")


async def saliency(request: Request, review: Review, reviewer: Reviewer) -> Response:
    entry = entry_of(request, review)
    decision = await decision_of(review, entry)
    model = review.saliency
    if model is None or not model.explains(decision.model.name):
        return review.pages.error(404, "No heat map: the page does not have this model.")
    category = request.query_params.get("category", "")
    try:
        shown = await _shown(review, entry, decision)
        async with review.heat_slots:
            body = await asyncio.to_thread(
                saliency_jpeg, shown, model, category, decision.model.heads_version
            )
    except (RecordUnavailable, SaliencyUnavailable) as exc:
        return review.pages.error(404, str(exc))
    return Response(body, media_type="image/jpeg")


async def _shown(review: Review, entry: QueueEntry, decision: Decision) -> Shown:
    key = (entry.tenant_id, entry.event_id)
    cached = review.shown.get(key)
    if cached is not None:
        return cached
    data = await review.images.image_bytes(decision)
    async with review.decode_slots:
        shown = await asyncio.to_thread(
            prepare, data, review.limits, review.display_max_side, review.model_input_size
        )
    review.shown.put(key, shown)
    return shown


async def verdict(request: Request, review: Review, reviewer: Reviewer) -> Response:
    form = await request.form()
    review.gate.check_post(request, reviewer, field_of(form.get(CSRF_FIELD)))
    entry = entry_of(request, review)
    key = (entry.tenant_id, entry.event_id)
    if key in review.in_flight:
        return review.pages.error(409, "This verdict is being recorded already.")
    holder = review.queue.claimant(entry.tenant_id, entry.event_id, datetime.now(UTC))
    if holder is not None and holder.reviewer_id != reviewer.id:
        return review.pages.error(
            409, f"{holder.reviewer_id} has this item open; take another one, or wait a moment."
        )
    decision = await decision_of(review, entry)
    allowed = verdict_categories(decision, review.policies.current.rules_for(entry.tenant_id))
    action = field_of(form.get("action"))
    category = field_of(form.get("category")) or None
    if action not in (Action.ALLOW.value, Action.BLOCK.value):
        return review.pages.error(400, "A verdict is allow or block.")
    if category is not None and (action != Action.BLOCK.value or category not in allowed):
        return review.pages.error(400, "That category cannot be given to this item.")
    reviewed_at = datetime.now(UTC)
    review.in_flight.add(key)
    try:
        earlier = review.unlabelled.get(key)
        if earlier is not None:
            # Its final decision went out already: record that verdict, not a second answer.
            await review.publisher.publish_label(earlier)
            published = earlier
        else:
            published = await review.publisher.publish(
                decision,
                VerdictChoice(Action(action), category),
                reviewer.id,
                reviewed_at,
                headers=entry.headers,
            )
    except LabelNotRecorded as exc:
        review.unlabelled[key] = exc.verdict
        return _not_recorded(review, entry, exc)
    except DeliveryError as exc:
        return _not_recorded(review, entry, exc)
    except ConfigError as exc:
        return review.pages.error(409, str(exc))
    finally:
        review.in_flight.discard(key)
    review.unlabelled.pop(key, None)
    review.queue.settle(published)
    review.metrics.verdict(
        entry.tenant_id,
        published.model_category,
        published.overturned,
        (published.reviewed_at - decision.decided_at).total_seconds(),
    )
    following = review.queue.next_for(entry.tenant_id, reviewer.id, datetime.now(UTC))
    target = f"/t/{entry.tenant_id}"
    if following is not None:
        target = f"{target}/items/{item_key(following)}"
    return RedirectResponse(target, status_code=303)


def _not_recorded(review: Review, entry: QueueEntry, exc: DeliveryError) -> Response:
    logger.error(
        "verdict not recorded: %s",
        exc,
        extra={"event_id": entry.event_id, "tenant": entry.tenant_id},
    )
    # The item stays queued; posting again completes the verdict.
    return review.pages.error(503, "Kafka did not take the verdict; post it again.")


def entry_of(request: Request, review: Review) -> QueueEntry:
    """The item the path names in the path's tenant queue; NotFound otherwise."""
    event_id = event_id_of(request.path_params["key"])
    found = review.queue.get(request.path_params["tenant"], event_id) if event_id else None
    if found is None:
        raise NotFound()
    return found


async def decision_of(review: Review, entry: QueueEntry) -> Decision:
    try:
        return await review.reader.decision(entry)
    except RecordUnavailable as exc:
        logger.warning(
            "review record unreadable: %s",
            exc,
            extra={"event_id": entry.event_id, "tenant": entry.tenant_id},
        )
        raise NotFound() from exc
