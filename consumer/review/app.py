"""The review page: a Starlette app rendered on the server, a few lines of script for keys.

Every route under ``/t/{tenant}`` checks the reviewer's tenants first, and finds items only
in that tenant's queue: an event id of another tenant, or one that was never queued, is the
same 404. Images are re-encoded (``consumer.review.render``) and never cached.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consumer.contract.events import Action, Decision
from consumer.errors import DeliveryError
from consumer.imaging.decode import ImageLimits
from consumer.moderation.watch import LivePolicies
from consumer.review.access import CSRF_FIELD, SESSION_COOKIE, Gate, Refused
from consumer.review.auth import Reviewer
from consumer.review.metrics import ReviewMetrics
from consumer.review.pages import Pages, item_view
from consumer.review.queue import QueueEntry, ReviewQueue
from consumer.review.records import ImageSource, RecordReader, RecordUnavailable
from consumer.review.render import display_jpeg, prepare, saliency_jpeg
from consumer.review.saliency import SaliencyModel, SaliencyUnavailable
from consumer.review.verdicts import VerdictChoice, VerdictPublisher

logger = logging.getLogger(__name__)

_TENANT = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_EVENT = re.compile(r"^[\x21-\x7e]{1,128}$")
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # Same-origin, not no-referrer: under no-referrer browsers send "Origin: null" with form
    # posts, and the CSRF check compares the origin with the page's own.
    (b"referrer-policy", b"same-origin"),
    # Pages and images show one tenant's content: no shared or browser cache keeps them.
    (b"cache-control", b"no-store"),
]


@dataclass(frozen=True)
class Review:
    """What the page works with; built once by ``consumer.review.service``."""

    queue: ReviewQueue
    gate: Gate
    pages: Pages
    publisher: VerdictPublisher
    reader: RecordReader
    images: ImageSource
    limits: ImageLimits
    policies: LivePolicies
    metrics: ReviewMetrics
    saliency: SaliencyModel | None
    display_max_side: int
    secure_cookies: bool
    ready: Callable[[], bool]


class SecurityHeaders:
    """Adds the security headers to every response, errors and static files included."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in SECURITY_HEADERS}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = kept + SECURITY_HEADERS
            await send(message)

        await self._app(scope, receive, send_with_headers)


Handler = Callable[[Request, Review, Reviewer], Awaitable[Response]]


def build_app(review: Review) -> ASGIApp:
    """The page as an ASGI app; the security headers wrap everything, server errors included."""

    def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                reviewer = review.gate.reviewer(request)
                tenant = request.path_params.get("tenant")
                if tenant is not None:
                    review.gate.tenant(reviewer, tenant)
                if not review.ready():
                    return review.pages.error(503, "The queue is still loading; try again.")
                return await handler(request, review, reviewer)
            except Refused as refused:
                return _refusal(review, refused)
            except _NotFound:
                return review.pages.error(404, "This item is not in this queue.")

        return endpoint

    async def login_form(request: Request) -> Response:
        return review.pages.login(None, status=200)

    async def login(request: Request) -> Response:
        form = await request.form()
        token = str(form.get("token", "")).strip()
        if not token or review.gate.mode != "token":
            return review.pages.login("Enter your reviewer token.", status=401)
        try:
            review.gate.by_token(token)
        except Refused as refused:
            return review.pages.login(refused.message, status=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=review.secure_cookies,
            max_age=12 * 3600,
        )
        return response

    app = Starlette(
        routes=[
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", guarded(logout), methods=["POST"]),
            Route("/", guarded(tenants_page), methods=["GET"]),
            Route("/t/{tenant}", guarded(queue_page), methods=["GET"]),
            Route("/t/{tenant}/items/{event_id:path}/image", guarded(image), methods=["GET"]),
            Route("/t/{tenant}/items/{event_id:path}/saliency", guarded(saliency), methods=["GET"]),
            Route("/t/{tenant}/items/{event_id:path}/verdict", guarded(verdict), methods=["POST"]),
            Route("/t/{tenant}/items/{event_id:path}", guarded(item_page), methods=["GET"]),
            Mount(
                "/static", app=StaticFiles(packages=[("consumer.review", "static")]), name="static"
            ),
        ],
    )
    return SecurityHeaders(app)


def _refusal(review: Review, refused: Refused) -> Response:
    if refused.status == 401:
        response = review.pages.login(refused.message, status=401)
        response.headers["www-authenticate"] = 'Bearer realm="modstream-review"'
        return response
    return review.pages.error(403, refused.message)


async def logout(request: Request, review: Review, reviewer: Reviewer) -> Response:
    form = await request.form()
    review.gate.check_post(request, reviewer, _field(form.get(CSRF_FIELD)))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


async def tenants_page(request: Request, review: Review, reviewer: Reviewer) -> Response:
    tenants = review.queue.tenants() if "*" in reviewer.tenants else sorted(reviewer.tenants)
    now = datetime.now(UTC)
    rows = [(t, review.queue.depth(t), review.queue.oldest_age_s(t, now)) for t in tenants]
    return _render(review, reviewer, "tenants.html", tenants=rows)


async def queue_page(request: Request, review: Review, reviewer: Reviewer) -> Response:
    tenant = request.path_params["tenant"]
    entries = review.queue.entries(tenant)
    return _render(
        review,
        reviewer,
        "queue.html",
        tenant=tenant,
        entries=entries[: review.pages.queue_page_size],
        total=len(entries),
        now=datetime.now(UTC),
    )


async def item_page(request: Request, review: Review, reviewer: Reviewer) -> Response:
    entry = _entry(request, review)
    decision = await _decision(review, entry)
    tenant = entry.tenant_id
    previous, following = review.queue.neighbours(tenant, entry.event_id)
    position = [e.event_id for e in review.queue.entries(tenant)].index(entry.event_id) + 1
    view = item_view(
        decision,
        review.policies.current.rules_for(tenant),
        review.saliency.categories(decision.model.heads_version)
        if review.saliency is not None and review.saliency.explains(decision.model.name)
        else [],
    )
    return _render(
        review,
        reviewer,
        "item.html",
        tenant=tenant,
        item=view,
        previous=previous,
        following=following,
        position=position,
        total=review.queue.depth(tenant),
        now=datetime.now(UTC),
    )


async def image(request: Request, review: Review, reviewer: Reviewer) -> Response:
    entry = _entry(request, review)
    decision = await _decision(review, entry)
    try:
        data = await review.images.image_bytes(decision)
        shown = await asyncio.to_thread(prepare, data, review.limits, review.display_max_side)
        body = await asyncio.to_thread(display_jpeg, shown)
    except RecordUnavailable as exc:
        return review.pages.error(404, str(exc))
    return Response(body, media_type="image/jpeg")


async def saliency(request: Request, review: Review, reviewer: Reviewer) -> Response:
    entry = _entry(request, review)
    decision = await _decision(review, entry)
    category = request.query_params.get("category", "")
    model = review.saliency
    if model is None or not model.explains(decision.model.name):
        return review.pages.error(404, "No heat map: the page does not have this model.")
    try:
        data = await review.images.image_bytes(decision)
        shown = await asyncio.to_thread(prepare, data, review.limits, review.display_max_side)
        body = await asyncio.to_thread(
            saliency_jpeg, shown, model, category, decision.model.heads_version
        )
    except (RecordUnavailable, SaliencyUnavailable) as exc:
        return review.pages.error(404, str(exc))
    return Response(body, media_type="image/jpeg")


async def verdict(request: Request, review: Review, reviewer: Reviewer) -> Response:
    form = await request.form()
    review.gate.check_post(request, reviewer, _field(form.get(CSRF_FIELD)))
    entry = _entry(request, review)
    decision = await _decision(review, entry)
    allowed = item_view(
        decision, review.policies.current.rules_for(entry.tenant_id), []
    ).verdict_categories
    action = _field(form.get("action"))
    category = _field(form.get("category")) or None
    if action not in (Action.ALLOW.value, Action.BLOCK.value):
        return review.pages.error(400, "A verdict is allow or block.")
    if category is not None and (action != Action.BLOCK.value or category not in allowed):
        return review.pages.error(400, "That category cannot be given to this item.")
    _, following = review.queue.neighbours(entry.tenant_id, entry.event_id)
    reviewed_at = datetime.now(UTC)
    try:
        published = await review.publisher.publish(
            decision,
            VerdictChoice(Action(action), category),
            reviewer.id,
            reviewed_at,
            headers=entry.headers,
        )
    except DeliveryError as exc:
        logger.error(
            "verdict not recorded: %s",
            exc,
            extra={"event_id": entry.event_id, "tenant": entry.tenant_id},
        )
        # The item stays queued; posting again produces the final decision again (same key).
        return review.pages.error(503, "Kafka did not take the verdict; post it again.")
    review.queue.settle(published)
    review.metrics.verdict(
        entry.tenant_id,
        published.model_category,
        published.overturned,
        (reviewed_at - decision.decided_at).total_seconds(),
    )
    target = f"/t/{entry.tenant_id}"
    if following is not None:
        target = f"{target}/items/{following}"
    return RedirectResponse(target, status_code=303)


def _entry(request: Request, review: Review) -> QueueEntry:
    tenant = request.path_params["tenant"]
    event_id = request.path_params["event_id"]
    found = None
    if _TENANT.match(tenant) and _EVENT.match(event_id):
        found = review.queue.get(tenant, event_id)
    if found is None:
        raise _NotFound()
    return found


async def _decision(review: Review, entry: QueueEntry) -> Decision:
    try:
        return await review.reader.decision(entry)
    except RecordUnavailable as exc:
        logger.warning(
            "review record unreadable: %s",
            exc,
            extra={"event_id": entry.event_id, "tenant": entry.tenant_id},
        )
        raise _NotFound() from exc


class _NotFound(Exception):
    """Not in this tenant's queue (or never was): always the same 404."""


def _render(review: Review, reviewer: Reviewer, template: str, **context: object) -> Response:
    return review.pages.render(
        template, reviewer=reviewer, csrf=review.gate.csrf_token(reviewer), **context
    )


def _field(value: object) -> str | None:
    return value if isinstance(value, str) else None
