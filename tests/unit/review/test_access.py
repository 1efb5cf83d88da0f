"""Reviewers, tokens, tenants, CSRF and the proxy sign-in, through the page's own app."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from starlette.testclient import TestClient

from consumer.contract.events import Action, ImageEvent, ReviewVerdict, SourceRecord
from consumer.errors import ConfigError, DeliveryError
from consumer.imaging.decode import ImageLimits
from consumer.moderation.policy import TopicRoutes, load_policy
from consumer.moderation.watch import LivePolicies
from consumer.review.access import Gate
from consumer.review.app import build_app
from consumer.review.auth import (
    CsrfTokens,
    Reviewer,
    ReviewerDirectory,
    SessionCookies,
    new_token,
)
from consumer.review.metrics import ReviewMetrics
from consumer.review.pages import Pages
from consumer.review.queue import RecordAt, ReviewQueue, event_id_of, item_key
from consumer.review.saliency import SaliencyModel
from consumer.review.state import Review
from consumer.review.verdicts import LabelNotRecorded, build_verdict
from consumer.runtime.metrics import TenantLabels
from tests.support.paths import DEFAULT_POLICY, TRITON_REPO
from tests.support.review import review_decision, write_reviewers

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_tokens_are_looked_up_by_digest_and_the_file_is_reread(tmp_path: Path) -> None:
    token, digest = new_token()
    assert len(token) >= 40
    assert digest != token
    path = write_reviewers(tmp_path / "r.yaml", {"alice": (token, ["acme"])})
    directory = ReviewerDirectory(path)
    found = directory.by_token(token)
    assert found == Reviewer("alice", frozenset({"acme"}))
    assert directory.by_token(digest) is None
    assert directory.by_token("") is None
    write_reviewers(path, {"bob": (token, ["*"])})
    os.utime(path, ns=(1, 2))  # a changed stamp, whatever the clock's resolution
    assert directory.by_token(token) == Reviewer("bob", frozenset({"*"}))
    assert directory.by_id("alice") is None
    # A broken edit keeps the last good file instead of locking everyone out.
    path.write_text("reviewers: [{id: 'x y', tenants: []}]\n", encoding="utf-8")
    assert directory.by_token(token) == Reviewer("bob", frozenset({"*"}))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("reviewers: [{id: a, tenants: []}]", "tenants"),
        ("reviewers: [{id: a, tenants: [x], token: plain}]", "token"),
        ("reviewers: [{id: a, tenants: [x]}, {id: a, tenants: [y]}]", "twice"),
        ("reviewers: [", "cannot read"),
    ],
)
def test_a_bad_reviewers_file_refuses_to_start(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        ReviewerDirectory(path)
    with pytest.raises(ConfigError, match="MODSTREAM_REVIEW__REVIEWERS_FILE"):
        ReviewerDirectory(tmp_path / "missing.yaml")


def test_csrf_tokens_are_bound_to_the_reviewer_and_the_secret() -> None:
    tokens = CsrfTokens(b"secret")
    alice, bob = Reviewer("alice", frozenset({"a"})), Reviewer("bob", frozenset({"a"}))
    assert tokens.valid(alice, tokens.issue(alice))
    assert not tokens.valid(alice, tokens.issue(bob))
    assert not tokens.valid(alice, CsrfTokens(b"other").issue(alice))
    assert not tokens.valid(alice, None)


def _app(
    tmp_path: Path,
    mode: Literal["token", "proxy"],
    publisher: Any = None,
    reader: Any = None,
    saliency: SaliencyModel | None = None,
    heads_version: str | None = None,
) -> tuple[TestClient, Gate]:
    reviewers = write_reviewers(
        tmp_path / "r.yaml", {"alice": ("alice-token", ["acme"]), "lead": ("lead-token", ["*"])}
    )
    metrics = ReviewMetrics(TenantLabels(10))
    gate = Gate(
        ReviewerDirectory(reviewers),
        CsrfTokens(b"s"),
        SessionCookies(b"s", 3600),
        metrics,
        mode,
        "X-Auth-User",
    )
    queue = ReviewQueue(10)
    event = ImageEvent(
        event_id="e-1", tenant_id="acme", image_url="https://example.com/a.jpg", created_at=NOW
    )
    source = SourceRecord(topic="in", partition=0, offset=0, timestamp_ms=None, key_b64=None)
    decision = review_decision(event, source, decided_at=NOW)
    if heads_version is not None:
        model = decision.model.model_copy(
            update={"heads_model": "heads", "heads_version": heads_version}
        )
        decision = decision.model_copy(update={"model": model})
    queue.add(decision, RecordAt("review", 0, 0))
    unused: Any = None
    held_only: Any = reader or _HeldOnly()
    publisher = publisher or _NoKafka()
    review = Review(
        queue=queue,
        gate=gate,
        pages=Pages(),
        publisher=publisher,
        reader=held_only,
        images=unused,
        limits=ImageLimits(max_bytes=1 << 20, max_pixels=1 << 20),
        policies=LivePolicies(load_policy(DEFAULT_POLICY, TopicRoutes("a", "r", "b"))),
        metrics=metrics,
        saliency=saliency,
        display_max_side=512,
        ready=lambda: True,
    )
    client = TestClient(
        build_app(review), base_url="https://review.test", raise_server_exceptions=False
    )
    return client, gate


class _NoKafka:
    """Claims go nowhere; a verdict would need Kafka."""

    async def publish_claim(self, claim: Any) -> None:
        return None


class _HeldOnly:
    """Every entry of these tests holds its decision: nothing is read from Kafka."""

    async def decision(self, entry: Any) -> Any:
        return entry.decision


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[TestClient]:
    client, _ = _app(tmp_path, "proxy")
    with client:
        yield client


def test_behind_a_proxy_the_reviewer_comes_from_its_header(proxied: TestClient) -> None:
    assert proxied.get("/").status_code == 401
    assert proxied.get("/", headers={"X-Auth-User": "mallory"}).status_code == 401
    # Tokens mean nothing in proxy mode: only the proxy says who it is.
    assert proxied.get("/", headers={"Authorization": "Bearer alice-token"}).status_code == 401
    home = proxied.get("/", headers={"X-Auth-User": "alice"})
    assert home.status_code == 200
    assert "acme" in home.text
    item = proxied.get(f"/t/acme/items/{item_key('e-1')}", headers={"X-Auth-User": "alice"})
    assert item.status_code == 200
    assert "e-1" in item.text
    assert proxied.get("/t/other", headers={"X-Auth-User": "alice"}).status_code == 403


def test_sign_in_sets_a_strict_http_only_cookie(tmp_path: Path) -> None:
    client, gate = _app(tmp_path, "token")
    with client:
        refused = client.post("/login", data={"token": "wrong"}, follow_redirects=False)
        assert refused.status_code == 401
        signed_in = client.post("/login", data={"token": "alice-token"}, follow_redirects=False)
        assert signed_in.status_code == 303
        cookie = signed_in.headers["set-cookie"]
        assert cookie.startswith("__Host-modstream_review=")
        for attribute in ("httponly", "samesite=strict", "secure", "path=/"):
            assert attribute in cookie.lower()
        # The cookie is a signed session, never the token itself.
        assert "alice-token" not in cookie
        assert client.get("/t/acme").status_code == 200
        alice = ReviewerDirectory(tmp_path / "r.yaml").by_id("alice")
        assert alice is not None
        csrf = gate.csrf_token(alice)
        assert client.post("/logout", data={}, follow_redirects=False).status_code == 403
        out = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
        assert out.status_code == 303
        client.cookies.clear()
        assert client.get("/t/acme").status_code == 401


def test_every_answer_carries_the_security_headers(tmp_path: Path) -> None:
    client, _ = _app(tmp_path, "token")
    with client:
        for path in ("/login", "/", "/static/review.js", "/t/acme/items/nope"):
            headers = client.get(path, headers={"Authorization": "Bearer lead-token"}).headers
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["cache-control"] == "no-store"
            assert headers["x-frame-options"] == "DENY"
            assert "script-src 'self'" in headers["content-security-policy"]


class _KafkaDown(_NoKafka):
    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        raise DeliveryError("producing to allow failed: KafkaTimeoutError")


class _Broken:
    async def decision(self, entry: Any) -> Any:
        raise RuntimeError("a bug")


def test_a_verdict_kafka_refused_keeps_the_item_and_says_so(tmp_path: Path) -> None:
    client, gate = _app(tmp_path, "token", publisher=_KafkaDown())
    alice = ReviewerDirectory(tmp_path / "r.yaml").by_id("alice")
    assert alice is not None
    csrf = gate.csrf_token(alice)
    auth = {"Authorization": "Bearer alice-token"}
    with client:
        answer = client.post(
            f"/t/acme/items/{item_key('e-1')}/verdict",
            data={"csrf": csrf, "action": "allow"},
            headers=auth,
        )
        assert answer.status_code == 503
        assert "post it again" in answer.text
        assert client.get(f"/t/acme/items/{item_key('e-1')}", headers=auth).status_code == 200


def test_a_server_error_still_carries_the_security_headers(tmp_path: Path) -> None:
    client, _ = _app(tmp_path, "token", reader=_Broken())
    with client:
        answer = client.get(
            f"/t/acme/items/{item_key('e-1')}", headers={"Authorization": "Bearer alice-token"}
        )
        assert answer.status_code == 500
        assert "a bug" not in answer.text
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["x-content-type-options"] == "nosniff"


def test_item_keys_keep_event_ids_out_of_paths() -> None:
    for event_id in ("e-1", "../../b/items/x", "x/image", "a?b#c%2F", "é"):
        key = item_key(event_id)
        assert set(key) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert event_id_of(key) == event_id
    for junk in ("", "..", "ZS0x=", "ZS0x/", "%2e%2e", "!!!!"):
        assert event_id_of(junk) is None


def test_sessions_expire_cannot_be_forged_and_end_with_the_token(tmp_path: Path) -> None:
    path = write_reviewers(tmp_path / "r.yaml", {"alice": ("alice-token", ["acme"])})
    directory = ReviewerDirectory(path)
    alice = directory.by_id("alice")
    assert alice is not None
    sessions = SessionCookies(b"secret", lifetime_s=60)
    cookie = sessions.issue(alice, now=1000)
    assert sessions.verify(cookie, now=1059) is not None
    assert sessions.verify(cookie, now=1061) is None
    assert SessionCookies(b"other", 60).verify(cookie, now=1000) is None
    body, _, signature = cookie.partition(".")
    assert sessions.verify(body[:-2] + "AA." + signature, now=1000) is None
    # A new token for alice: the old session and the old forms stop working.
    csrf = CsrfTokens(b"secret")
    old_form = csrf.issue(alice)
    write_reviewers(path, {"alice": ("alice-token-2", ["acme"])})
    os.utime(path, ns=(3, 4))
    renewed = directory.by_id("alice")
    assert renewed is not None
    session = sessions.verify(cookie, now=1000)
    assert session is not None
    assert session.token_sha256 != renewed.token_sha256
    assert not csrf.valid(renewed, old_form)


def test_sign_in_from_another_site_and_huge_bodies_are_refused(tmp_path: Path) -> None:
    client, _ = _app(tmp_path, "token")
    with client:
        for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            answer = client.post(
                "/login", data={"token": "alice-token"}, headers=headers, follow_redirects=False
            )
            assert answer.status_code == 403
            assert "set-cookie" not in answer.headers
        huge = client.post("/login", content=b"token=" + b"x" * 100_000)
        assert huge.status_code == 413


def test_an_item_whose_heads_are_missing_is_still_reviewable(tmp_path: Path) -> None:
    if not (TRITON_REPO / "nsfw_mobilenet_v2" / "1" / "model.onnx").is_file():
        pytest.fail("triton_repo is not set up: run ./scripts/setup.sh")
    model = SaliencyModel.load(TRITON_REPO, "nsfw_mobilenet_v2")
    client, _ = _app(tmp_path, "token", saliency=model, heads_version="99")
    with client:
        page = client.get(
            f"/t/acme/items/{item_key('e-1')}", headers={"Authorization": "Bearer alice-token"}
        )
        assert page.status_code == 200
        assert "No heat map" in page.text


class _LabelFailsOnce(_NoKafka):
    def __init__(self) -> None:
        self.decisions = 0
        self.labels: list[ReviewVerdict] = []

    async def publish(
        self, decision: Any, choice: Any, reviewer_id: str, at: Any, headers: Any = ()
    ) -> ReviewVerdict:
        self.decisions += 1
        verdict = build_verdict(decision, choice, reviewer_id, at)
        raise LabelNotRecorded("labels topic unavailable", verdict)

    async def publish_label(self, verdict: ReviewVerdict) -> None:
        self.labels.append(verdict)


def test_a_verdict_whose_label_failed_is_completed_as_first_given(tmp_path: Path) -> None:
    publisher = _LabelFailsOnce()
    client, gate = _app(tmp_path, "token", publisher=publisher)
    alice = ReviewerDirectory(tmp_path / "r.yaml").by_id("alice")
    assert alice is not None
    url = f"/t/acme/items/{item_key('e-1')}/verdict"
    auth = {"Authorization": "Bearer alice-token"}
    with client:
        first = client.post(
            url, data={"csrf": gate.csrf_token(alice), "action": "block"}, headers=auth
        )
        assert first.status_code == 503
        again = client.post(
            url,
            data={"csrf": gate.csrf_token(alice), "action": "allow"},
            headers=auth,
            follow_redirects=False,
        )
        assert again.status_code == 303
    # One final decision; the label completes the first verdict, not the second click.
    assert publisher.decisions == 1
    assert [v.action for v in publisher.labels] == [Action.BLOCK]
