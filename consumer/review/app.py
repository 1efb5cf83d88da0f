"""The review page: a Starlette app rendered on the server, a few lines of script for keys.

Every route under ``/t/{tenant}`` checks the reviewer's tenants first, and finds items only
in that tenant's queue: an event id of another tenant, or one that was never queued, is the
same 404. Images are re-encoded (``consumer.review.render``) and never cached.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from consumer.review.access import CSRF_FIELD, Refused
from consumer.review.auth import Reviewer
from consumer.review.guards import BodyLimit, SecurityHeaders
from consumer.review.items import image, item_page, saliency, verdict
from consumer.review.queue import item_key
from consumer.review.state import NotFound, Review, field_of, render

logger = logging.getLogger(__name__)

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
            except NotFound:
                return review.pages.error(404, "This item is not in this queue.")

        return endpoint

    async def login_form(request: Request) -> Response:
        return review.pages.login(None, status=200)

    async def login(request: Request) -> Response:
        try:
            review.gate.check_origin(request)
            form = await request.form()
            token = str(form.get("token", "")).strip()
            if not token or review.gate.mode != "token":
                return review.pages.login("Enter your reviewer token.", status=401)
            reviewer = review.gate.by_token(token)
        except Refused as refused:
            return review.pages.login(refused.message, status=refused.status)
        response = RedirectResponse("/", status_code=303)
        review.gate.sign_in(response, reviewer)
        return response

    item = "/t/{tenant}/items/{key}"
    app = Starlette(
        routes=[
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", guarded(logout), methods=["POST"]),
            Route("/", guarded(tenants_page), methods=["GET"]),
            Route("/t/{tenant}", guarded(queue_page), methods=["GET"]),
            Route(item, guarded(item_page), methods=["GET"]),
            Route(f"{item}/image", guarded(image), methods=["GET"]),
            Route(f"{item}/saliency", guarded(saliency), methods=["GET"]),
            Route(f"{item}/verdict", guarded(verdict), methods=["POST"]),
            Mount(
                "/static", app=StaticFiles(packages=[("consumer.review", "static")]), name="static"
            ),
        ],
    )
    return SecurityHeaders(BodyLimit(app))


def _refusal(review: Review, refused: Refused) -> Response:
    if refused.status == 401:
        response = review.pages.login(refused.message, status=401)
        response.headers["www-authenticate"] = 'Bearer realm="modstream-review"'
        return response
    return review.pages.error(403, refused.message)


async def logout(request: Request, review: Review, reviewer: Reviewer) -> Response:
    form = await request.form()
    review.gate.check_post(request, reviewer, field_of(form.get(CSRF_FIELD)))
    response = RedirectResponse("/login", status_code=303)
    review.gate.sign_out(response)
    return response


async def tenants_page(request: Request, review: Review, reviewer: Reviewer) -> Response:
    tenants = review.queue.tenants() if "*" in reviewer.tenants else sorted(reviewer.tenants)
    now = datetime.now(UTC)
    rows = [(t, review.queue.depth(t), review.queue.oldest_age_s(t, now)) for t in tenants]
    return render(review, reviewer, "tenants.html", tenants=rows)


async def queue_page(request: Request, review: Review, reviewer: Reviewer) -> Response:
    tenant = request.path_params["tenant"]
    now = datetime.now(UTC)
    start = review.queue.next_for(tenant, reviewer.id, now)
    return render(
        review,
        reviewer,
        "queue.html",
        tenant=tenant,
        entries=[
            (item_key(entry.event_id), entry, review.queue.claimant(tenant, entry.event_id, now))
            for entry in review.queue.entries(tenant, review.pages.queue_page_size)
        ],
        start=item_key(start) if start is not None else None,
        total=review.queue.depth(tenant),
        now=now,
    )
