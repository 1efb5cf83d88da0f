"""Every request's reviewer, or the refusal: 401 without credentials, 403 outside a reviewer's
tenants or without a valid CSRF token. Refusals say nothing about what exists.

Two ways in (``MODSTREAM_REVIEW__AUTH``): a bearer token (``Authorization: Bearer …``, or the
session cookie the sign-in form sets, which holds the same token), or the reviewer id an
authenticating proxy put in ``MODSTREAM_REVIEW__PROXY_USER_HEADER``.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from starlette.requests import Request

from consumer.review.auth import CsrfTokens, Reviewer, ReviewerDirectory
from consumer.review.metrics import ReviewMetrics

SESSION_COOKIE = "modstream_review"
CSRF_FIELD = "csrf"

Refusal = Literal["missing", "invalid", "forbidden", "csrf"]


class Refused(Exception):
    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def status(self) -> int:
        return 401 if self.reason in ("missing", "invalid") else 403


class Gate:
    def __init__(
        self,
        reviewers: ReviewerDirectory,
        csrf: CsrfTokens,
        metrics: ReviewMetrics,
        mode: Literal["token", "proxy"],
        proxy_user_header: str,
    ) -> None:
        self._reviewers = reviewers
        self._csrf = csrf
        self._metrics = metrics
        self.mode = mode
        self._proxy_user_header = proxy_user_header

    def reviewer(self, request: Request) -> Reviewer:
        """The signed-in reviewer; Refused (401) otherwise."""
        if self.mode == "proxy":
            user = request.headers.get(self._proxy_user_header)
            if not user:
                raise self._refuse("missing", "no reviewer identity from the proxy")
            found = self._reviewers.by_id(user)
            if found is None:
                raise self._refuse("invalid", "this reviewer is not in the reviewers file")
            return found
        token = bearer_token(request)
        if token is None:
            raise self._refuse("missing", "sign in with your reviewer token")
        return self.by_token(token)

    def by_token(self, token: str) -> Reviewer:
        found = self._reviewers.by_token(token)
        if found is None:
            raise self._refuse("invalid", "this token is not valid; ask for a new one")
        return found

    def tenant(self, reviewer: Reviewer, tenant_id: str) -> None:
        """Refused (403) unless the reviewer reviews ``tenant_id`` — the same answer whether
        or not that tenant exists."""
        if not reviewer.may_review(tenant_id):
            raise self._refuse("forbidden", "you do not review this tenant")

    def check_post(self, request: Request, reviewer: Reviewer, token: str | None) -> None:
        """Refused (403) for a post without this reviewer's CSRF token or from another site."""
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            raise self._refuse("csrf", "this form was posted from another site")
        if not self._csrf.valid(reviewer, token):
            raise self._refuse("csrf", "the form expired or was not sent by this page; reload")

    def csrf_token(self, reviewer: Reviewer) -> str:
        return self._csrf.issue(reviewer)

    def _refuse(self, reason: Refusal, message: str) -> Refused:
        self._metrics.auth_failures.labels(reason).inc()
        return Refused(reason, message)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return request.cookies.get(SESSION_COOKIE) or None
