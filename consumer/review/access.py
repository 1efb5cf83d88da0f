"""Every request's reviewer, or the refusal: 401 without credentials, 403 outside a reviewer's
tenants or without a valid CSRF token. Refusals say nothing about what exists.

Two ways in (``MODSTREAM_REVIEW__AUTH``): a bearer token (``Authorization: Bearer …``, or the
signed session cookie the sign-in form sets after checking one), or the reviewer id an
authenticating proxy put in ``MODSTREAM_REVIEW__PROXY_USER_HEADER``.
"""

from __future__ import annotations

import time
from typing import Literal
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from consumer.review.auth import CsrfTokens, Reviewer, ReviewerDirectory, SessionCookies
from consumer.review.metrics import ReviewMetrics

CSRF_FIELD = "csrf"
# "__Host-": the browser keeps it only from this host over HTTPS, path "/", no domain.
SECURE_COOKIE = "__Host-modstream_review"
PLAIN_COOKIE = "modstream_review"

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
        sessions: SessionCookies,
        metrics: ReviewMetrics,
        mode: Literal["token", "proxy"],
        proxy_user_header: str,
        secure_cookies: bool = True,
    ) -> None:
        self._reviewers = reviewers
        self._csrf = csrf
        self._sessions = sessions
        self._metrics = metrics
        self.mode = mode
        self._proxy_user_header = proxy_user_header
        self._secure = secure_cookies
        self.cookie = SECURE_COOKIE if secure_cookies else PLAIN_COOKIE

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
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise self._refuse("invalid", "send Authorization: Bearer <token>")
            return self.by_token(token.strip())
        cookie = request.cookies.get(self.cookie)
        if not cookie:
            raise self._refuse("missing", "sign in with your reviewer token")
        session = self._sessions.verify(cookie, time.time())
        found = self._reviewers.by_id(session.reviewer_id) if session is not None else None
        if session is None or found is None or found.token_sha256 != session.token_sha256:
            raise self._refuse("invalid", "your session ended; sign in again")
        return found

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

    def check_origin(self, request: Request) -> None:
        """Refused (403) for a post another site made the browser send (sign-in included:
        signing a reviewer in as someone else is an attack too)."""
        origin = request.headers.get("origin")
        if request.headers.get("sec-fetch-site") == "cross-site" or (
            origin is not None and not self._same_origin(request, origin)
        ):
            raise self._refuse("csrf", "this form was posted from another site")

    def check_post(self, request: Request, reviewer: Reviewer, token: str | None) -> None:
        """Refused (403) for a post without this reviewer's CSRF token or from another site."""
        self.check_origin(request)
        if not self._csrf.valid(reviewer, token):
            raise self._refuse("csrf", "the form expired or was not sent by this page; reload")

    def csrf_token(self, reviewer: Reviewer) -> str:
        return self._csrf.issue(reviewer)

    def sign_in(self, response: Response, reviewer: Reviewer) -> None:
        response.set_cookie(
            self.cookie,
            self._sessions.issue(reviewer, time.time()),
            max_age=self._sessions.lifetime_s,
            path="/",
            httponly=True,
            samesite="strict",
            secure=self._secure,
        )

    def sign_out(self, response: Response) -> None:
        response.delete_cookie(
            self.cookie, path="/", httponly=True, samesite="strict", secure=self._secure
        )

    def _same_origin(self, request: Request, origin: str) -> bool:
        parts = urlsplit(origin)
        # Behind a TLS-terminating proxy the page itself sees http; the host must match.
        return parts.netloc == request.headers.get("host") and parts.scheme in ("http", "https")

    def _refuse(self, reason: Refusal, message: str) -> Refused:
        self._metrics.auth_failures.labels(reason).inc()
        return Refused(reason, message)
