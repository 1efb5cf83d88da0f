"""Who is reviewing, and which tenants they may see.

The reviewers file (YAML, a Secret in Kubernetes) lists each reviewer with the tenants they
review and, for token sign-in, the SHA-256 of their bearer token — never the token itself::

    reviewers:
      - id: alice
        token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        tenants: [marketplace, tickets]
      - id: lead
        token_sha256: ...
        tenants: ["*"]          # every tenant

``modstream review token`` prints a new token and the line to add. The file is read again
when it changes, so adding or removing a reviewer needs no restart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from consumer.errors import ConfigError

logger = logging.getLogger(__name__)

ALL_TENANTS = "*"
TOKEN_BYTES = 32


class ReviewerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\w.@+-]+$")]
    token_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    tenants: list[str] = Field(min_length=1)


class ReviewersFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reviewers: list[ReviewerSpec]


@dataclass(frozen=True)
class Reviewer:
    id: str
    tenants: frozenset[str]
    token_sha256: str | None = field(default=None, compare=False)
    """The digest of the reviewer's current token: a new token ends old sessions and forms."""

    def may_review(self, tenant_id: str) -> bool:
        return ALL_TENANTS in self.tenants or tenant_id in self.tenants


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh bearer token and its SHA-256 (what the reviewers file holds)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, token_digest(token)


class ReviewerDirectory:
    """The reviewers file, read again whenever it changes on disk."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._by_id: dict[str, Reviewer] = {}
        self._by_digest: dict[str, Reviewer] = {}
        self._refresh()

    def by_token(self, token: str) -> Reviewer | None:
        self._refresh_if_changed()
        # A lookup by digest leaks nothing: the digest of a guess says nothing about a token.
        return self._by_digest.get(token_digest(token))

    def by_id(self, reviewer_id: str) -> Reviewer | None:
        self._refresh_if_changed()
        return self._by_id.get(reviewer_id)

    def _refresh_if_changed(self) -> None:
        try:
            self._refresh()
        except ConfigError:
            # A broken edit must not lock every reviewer out: keep the last good file.
            logger.exception("reviewers file %s is invalid; keeping the last good one", self._path)

    def _refresh(self) -> None:
        try:
            stat = self._path.stat()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the reviewers file {self._path} ({exc.strerror}); set "
                "MODSTREAM_REVIEW__REVIEWERS_FILE (docs/review.md shows its format)"
            ) from exc
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        document = _parse(self._path)
        by_id = {
            spec.id: Reviewer(spec.id, frozenset(spec.tenants), spec.token_sha256)
            for spec in document.reviewers
        }
        if len(by_id) != len(document.reviewers):
            raise ConfigError(f"{self._path}: a reviewer id is listed twice")
        self._by_id = by_id
        self._by_digest = {
            spec.token_sha256: by_id[spec.id]
            for spec in document.reviewers
            if spec.token_sha256 is not None
        }
        self._stamp = stamp
        logger.info("reviewers file %s loaded: %d reviewers", self._path, len(by_id))


def _parse(path: Path) -> ReviewersFile:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        return ReviewersFile.model_validate(raw)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the reviewers file {path}: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(file)"
        raise ConfigError(
            f"reviewers file {path}: {where}: {first['msg']}; docs/review.md shows the format"
        ) from exc


class CsrfTokens:
    """Form tokens bound to the reviewer and their current token: a form from one reviewer's
    page cannot be posted for another, one from before a token change not at all, and a page
    on another site cannot know it. Replicas share the secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def issue(self, reviewer: Reviewer) -> str:
        message = f"csrf\0{reviewer.id}\0{reviewer.token_sha256 or ''}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def valid(self, reviewer: Reviewer, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.issue(reviewer), token)


@dataclass(frozen=True)
class Session:
    reviewer_id: str
    token_sha256: str


class SessionCookies:
    """The sign-in cookie: the reviewer id, an expiry and the token's digest, signed. It never
    holds the token; it ends at its expiry, and when the reviewer's token changes."""

    def __init__(self, secret: bytes, lifetime_s: int) -> None:
        self._secret = secret
        self._lifetime_s = lifetime_s

    @property
    def lifetime_s(self) -> int:
        return self._lifetime_s

    def issue(self, reviewer: Reviewer, now: float) -> str:
        payload = f"{reviewer.id}\0{int(now) + self._lifetime_s}\0{reviewer.token_sha256 or ''}"
        body = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
        return f"{body}.{self._sign(body)}"

    def verify(self, value: str, now: float) -> Session | None:
        body, _, signature = value.partition(".")
        if not body or not hmac.compare_digest(self._sign(body), signature):
            return None
        try:
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
            reviewer_id, expiry, digest = payload.split("\0")
            if int(expiry) < now:
                return None
        except ValueError:
            return None
        return Session(reviewer_id, digest)

    def _sign(self, body: str) -> str:
        return hmac.new(self._secret, b"session\0" + body.encode(), hashlib.sha256).hexdigest()
