"""The review page on the real broker: who may see what, CSRF, escaping, image headers and
caps, and verdicts that reach the labels topic and the action's topic."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bench.local.tansu import TansuBroker, ensure_topics
from consumer.contract.events import Action, Decision, ImageEvent, ReviewVerdict, SourceRecord
from consumer.review.queue import item_key
from consumer.runtime.settings import ImagingSettings, Settings
from tests.support.image_server import image_server
from tests.support.kafka_io import produce_positions, read_until
from tests.support.paths import TRITON_REPO
from tests.support.review import (
    Topics,
    answered,
    fresh_topics,
    png_bytes,
    queue_items,
    review_decision,
    review_page,
    review_settings,
    wait_until,
    write_policy,
    write_reviewers,
)

pytestmark = pytest.mark.integration

TOKENS = {"alice": "alice-token-1", "tina": "tina-token-2", "lead": "lead-token-3"}
HOSTILE = '<script>alert("x")</script>'
TRAVERSAL = "../../tickets/items/" + item_key("t-1")


@dataclass(frozen=True)
class Page:
    url: str
    metrics_url: str
    topics: Topics
    settings: Settings
    decisions: dict[str, Decision]


@pytest.fixture(scope="module")
def page(broker: TansuBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    folder = tmp_path_factory.mktemp("review")
    topics = fresh_topics()
    asyncio.run(
        ensure_topics(
            broker.bootstrap_servers,
            {topics.input: 2, topics.review: 2, topics.tickets_review: 1, topics.labels: 1},
        )
    )
    items = [
        ("acme", "a-1", png_bytes((200, 30, 30)), "suggestive"),
        ("acme", "a-2", png_bytes((30, 200, 30)), "suggestive"),
        ("acme", "a-3", png_bytes((30, 30, 200)), None),
        ("acme", "a-big", png_bytes((90, 90, 90), size=(1200, 1000)), "suggestive"),
        ("tickets", "t-1", png_bytes((250, 250, 0)), "sexual_explicit"),
        # An event id chosen to walk a browser from acme's queue to tickets' item.
        ("acme", TRAVERSAL, png_bytes((1, 2, 3)), "suggestive"),
    ]
    decisions = asyncio.run(
        queue_items(broker.bootstrap_servers, topics, items, metadata={"note": HOSTILE})
    )
    settings = review_settings(
        broker.bootstrap_servers,
        topics,
        write_policy(folder / "policy.yaml", topics),
        write_reviewers(
            folder / "reviewers.yaml",
            {
                "alice": (TOKENS["alice"], ["acme"]),
                "tina": (TOKENS["tina"], ["tickets"]),
                "lead": (TOKENS["lead"], ["*"]),
            },
        ),
        saliency_repository=TRITON_REPO,
    )
    # Small enough that a-big (1.2 MP) breaks it: the image endpoint applies the caps.
    settings = settings.model_copy(update={"imaging": ImagingSettings(max_pixels=1_000_000)})
    with review_page(settings) as running:
        _wait_ready(running.url)
        yield Page(
            running.url,
            running.metrics_url,
            topics,
            settings,
            {d.event_id: d for d in decisions},
        )


def _wait_ready(url: str) -> None:
    wait_until(
        lambda: httpx.get(f"{url}/", headers=_auth("lead")).status_code == 200,
        30,
        "the review page never loaded its queue",
    )


def _auth(reviewer: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[reviewer]}"}


def _csrf(page: Page, reviewer: str, path: str) -> str:
    html = httpx.get(f"{page.url}{path}", headers=_auth(reviewer)).text
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found is not None, html[:500]
    return found.group(1)


def test_missing_or_bad_credentials_get_401(page: Page) -> None:
    for path in (
        "/",
        "/t/acme",
        f"/t/acme/items/{item_key('a-1')}",
        f"/t/acme/items/{item_key('a-1')}/image",
    ):
        missing = httpx.get(f"{page.url}{path}")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        bad = httpx.get(f"{page.url}{path}", headers={"Authorization": "Bearer not-a-token"})
        assert bad.status_code == 401
        assert "a-1" not in missing.text
        assert "a-1" not in bad.text
    cookie = httpx.get(f"{page.url}/", cookies={"modstream_review": "forged"})
    assert cookie.status_code == 401
    posted = httpx.post(
        f"{page.url}/t/acme/items/{item_key('a-1')}/verdict", data={"action": "allow"}
    )
    assert posted.status_code == 401


def test_reviewers_see_only_their_tenants(page: Page) -> None:
    home = httpx.get(f"{page.url}/", headers=_auth("alice"))
    assert home.status_code == 200
    assert "acme" in home.text
    assert "tickets" not in home.text
    # Another tenant: 403 for its queue and items, whether or not they exist.
    for path in (
        "/t/tickets",
        f"/t/tickets/items/{item_key('t-1')}",
        f"/t/tickets/items/{item_key('t-1')}/image",
        f"/t/tickets/items/{item_key('t-1')}/saliency?category=suggestive",
        "/t/no-such-tenant",
    ):
        answer = httpx.get(f"{page.url}{path}", headers=_auth("alice"))
        assert answer.status_code == 403, path
        assert "t-1" not in answer.text
    # Another tenant's event id under one's own tenant, guessed ids, offsets in the query:
    # the same 404, and nothing about the other item.
    for path in (
        f"/t/acme/items/{item_key('t-1')}",
        f"/t/acme/items/{item_key('t-1')}/image",
        f"/t/acme/items/{item_key('a-999')}",
        "/t/acme/items/..%2F..%2Ft%2Ftickets%2Fitems%2Ft-1",
        f"/t/acme/items/{item_key('a-1x')}/image?topic=x&partition=0&offset=0",
    ):
        answer = httpx.get(f"{page.url}{path}", headers=_auth("alice"))
        assert answer.status_code == 404, path
        assert "tickets" not in answer.text
        assert "t-1" not in answer.text
    # Query parameters never choose a record: the image is the item's own.
    own = httpx.get(f"{page.url}/t/acme/items/{item_key('a-1')}/image", headers=_auth("alice"))
    other = httpx.get(
        f"{page.url}/t/acme/items/{item_key('a-1')}/image?topic={page.topics.input}&partition=0&offset=4",
        headers=_auth("alice"),
    )
    assert own.status_code == other.status_code == 200
    assert own.content == other.content
    # Verdicts on another tenant's item are refused too.
    token = _csrf(page, "alice", f"/t/acme/items/{item_key('a-1')}")
    posted = httpx.post(
        f"{page.url}/t/tickets/items/{item_key('t-1')}/verdict",
        data={"csrf": token, "action": "allow"},
        headers=_auth("alice"),
    )
    assert posted.status_code == 403
    # The lead sees both.
    lead = httpx.get(f"{page.url}/", headers=_auth("lead"))
    assert "acme" in lead.text
    assert "tickets" in lead.text


def test_posts_without_the_reviewers_csrf_token_are_refused(page: Page) -> None:
    url = f"{page.url}/t/acme/items/{item_key('a-3')}/verdict"
    assert httpx.post(url, data={"action": "allow"}, headers=_auth("alice")).status_code == 403
    lead_token = _csrf(page, "lead", f"/t/acme/items/{item_key('a-3')}")
    forged = httpx.post(url, data={"action": "allow", "csrf": lead_token}, headers=_auth("alice"))
    assert forged.status_code == 403
    own = _csrf(page, "alice", f"/t/acme/items/{item_key('a-3')}")
    cross_site = httpx.post(
        url,
        data={"action": "allow", "csrf": own},
        headers={**_auth("alice"), "Origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403
    still_there = httpx.get(f"{page.url}/t/acme/items/{item_key('a-3')}", headers=_auth("alice"))
    assert still_there.status_code == 200


def test_text_from_events_is_escaped(page: Page) -> None:
    html = httpx.get(f"{page.url}/t/acme/items/{item_key('a-1')}", headers=_auth("alice")).text
    assert HOSTILE not in html
    assert "&lt;script&gt;" in html


def test_images_are_reencoded_uncached_and_capped(page: Page) -> None:
    answer = httpx.get(f"{page.url}/t/acme/items/{item_key('a-1')}/image", headers=_auth("alice"))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/jpeg"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    with Image.open(io.BytesIO(answer.content)) as shown:
        assert shown.format == "JPEG"
        assert shown.size == (320, 240)
    big = httpx.get(f"{page.url}/t/acme/items/{item_key('a-big')}/image", headers=_auth("alice"))
    assert big.status_code == 404
    assert "pixels" in big.text
    heat = httpx.get(
        f"{page.url}/t/acme/items/{item_key('a-1')}/saliency?category=suggestive",
        headers=_auth("alice"),
    )
    assert heat.status_code == 200
    assert heat.headers["cache-control"] == "no-store"
    unknown = httpx.get(
        f"{page.url}/t/acme/items/{item_key('a-1')}/saliency?category=<b>nope</b>",
        headers=_auth("alice"),
    )
    assert unknown.status_code == 404
    assert "<b>nope</b>" not in unknown.text


def test_verdicts_reach_the_labels_topic_and_the_actions_topic(page: Page) -> None:
    token = _csrf(page, "alice", f"/t/acme/items/{item_key('a-1')}")
    url = f"{page.url}/t/acme/items"
    allowed = httpx.post(
        f"{url}/{item_key('a-1')}/verdict",
        data={"csrf": token, "action": "allow"},
        headers=_auth("alice"),
    )
    assert allowed.status_code == 303
    assert allowed.headers["location"] == f"/t/acme/items/{item_key('a-2')}"
    refused = httpx.post(
        f"{url}/{item_key('a-2')}/verdict",
        data={"csrf": token, "action": "block", "category": "not-a-category"},
        headers=_auth("alice"),
    )
    assert refused.status_code == 400
    blocked = httpx.post(
        f"{url}/{item_key('a-2')}/verdict",
        data={"csrf": token, "action": "block", "category": "suggestive"},
        headers=_auth("alice"),
    )
    assert blocked.status_code == 303
    assert httpx.get(f"{url}/{item_key('a-1')}", headers=_auth("alice")).status_code == 404

    bootstrap = page.settings.kafka.bootstrap_servers
    labels = asyncio.run(read_until(bootstrap, [page.topics.labels], 2, 20))
    verdicts = {
        v.event_id: v for v in (ReviewVerdict.model_validate_json(m.value or b"") for m in labels)
    }
    assert {m.key for m in labels} == {b"a-1", b"a-2"}
    first, second = verdicts["a-1"], verdicts["a-2"]
    assert (first.action, first.reviewer_id, first.overturned) == (Action.ALLOW, "alice", True)
    assert first.model_action is Action.BLOCK
    assert first.model_category == "suggestive"
    assert first.source == page.decisions["a-1"].source
    assert (second.action, second.category, second.overturned) == (
        Action.BLOCK,
        "suggestive",
        False,
    )
    allow = asyncio.run(read_until(bootstrap, [page.topics.allow], 1, 20))
    block = asyncio.run(read_until(bootstrap, [page.topics.block], 1, 20))
    final_allow = Decision.model_validate_json(allow[0].value or b"")
    final_block = Decision.model_validate_json(block[0].value or b"")
    assert final_allow.event_id == "a-1"
    assert final_allow.action is Action.ALLOW
    assert [r.rule for r in final_allow.reasons] == ["human_review"]
    assert final_allow.human_review is not None
    assert final_allow.human_review.overrides.action is Action.REVIEW
    assert final_allow.human_review.overrides.reasons == page.decisions["a-1"].reasons
    assert final_block.event_id == "a-2"
    assert final_block.reasons[0].category == "suggestive"
    assert dict(allow[0].headers)["modstream-reviewer"] == b"alice"

    metrics = httpx.get(f"{page.metrics_url}/metrics").text
    assert 'modstream_review_queue_depth{tenant="acme"}' in metrics
    assert re.search(
        r'modstream_review_verdicts_total\{category="suggestive",outcome="overturned",'
        r'tenant="acme"\} 1\.0',
        metrics,
    )
    assert 'modstream_review_auth_failures_total{reason="forbidden"}' in metrics


def test_a_restarted_page_does_not_show_reviewed_items(page: Page, tmp_path: Path) -> None:
    # Runs after the verdict test (file order): a-1 and a-2 have verdicts on the labels topic.
    with review_page(page.settings) as second:
        _wait_ready(second.url)
        queue = httpx.get(f"{second.url}/t/acme", headers=_auth("alice")).text
    assert "a-3" in queue
    assert "a-1" not in queue.replace("a-1x", "")
    assert ">a-2<" not in queue


def test_an_image_url_goes_through_the_egress_guard(page: Page) -> None:
    """Added while the page runs (the feed follows the topic); its URL names a loopback server,
    which the consumer's egress guard refuses, so the page refuses it too."""
    bootstrap = page.settings.kafka.bootstrap_servers
    with image_server() as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/image.png"
        event = ImageEvent(
            event_id="a-url", tenant_id="acme", image_url=url, created_at=datetime.now(UTC)
        )
        [(partition, offset)] = asyncio.run(
            produce_positions(
                bootstrap, page.topics.input, [(b"a-url", event.model_dump_json().encode(), [])]
            )
        )
        source = SourceRecord(
            topic=page.topics.input,
            partition=partition,
            offset=offset,
            timestamp_ms=None,
            key_b64=None,
        )
        decision = review_decision(event, source, decided_at=datetime.now(UTC))
        asyncio.run(
            produce_positions(
                bootstrap, page.topics.review, [(b"a-url", decision.model_dump_json().encode(), [])]
            )
        )
        item = answered(
            lambda: httpx.get(
                f"{page.url}/t/acme/items/{item_key('a-url')}", headers=_auth("alice")
            ),
            20,
        )
        assert item.status_code == 200
        shown = httpx.get(
            f"{page.url}/t/acme/items/{item_key('a-url')}/image", headers=_auth("alice")
        )
        assert shown.status_code == 404
        assert "FETCH_ALLOW_NETWORKS" in shown.text
        assert server.hits["/image.png"] == 0


def test_event_ids_never_steer_links_to_another_item(page: Page) -> None:
    """Links name items by key: an event id made of '../' stays text, and its own item opens."""
    queue = httpx.get(f"{page.url}/t/acme", headers=_auth("lead")).text
    hrefs = re.findall(r'href="([^"]+)"', queue)
    assert hrefs
    assert all(".." not in href and "/t/tickets" not in href for href in hrefs)
    own = httpx.get(f"{page.url}/t/acme/items/{item_key(TRAVERSAL)}", headers=_auth("lead"))
    assert own.status_code == 200
    assert "../../tickets/items/" in own.text
