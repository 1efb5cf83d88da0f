"""Two reviewers on two replicas of the page: an item one of them has open is skipped for the
other, and the other cannot give it a verdict meanwhile."""

from __future__ import annotations

import asyncio
import functools
import re

import httpx
import pytest

from bench.local.tansu import TansuBroker, ensure_topics
from consumer.review.queue import item_key
from tests.support.review import (
    fresh_topics,
    png_bytes,
    queue_items,
    review_page,
    review_settings,
    wait_until,
    write_policy,
    write_reviewers,
)

pytestmark = pytest.mark.integration

TOKENS = {"rita": "rita-claims", "tina": "tina-claims"}


def _auth(reviewer: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[reviewer]}"}


def _start_link(url: str, reviewer: str) -> str | None:
    html = httpx.get(f"{url}/t/acme", headers=_auth(reviewer)).text
    found = re.search(r'id="start" href="/t/acme/items/([A-Za-z0-9_-]+)"', html)
    return found.group(1) if found else None


def _starts_with(url: str, reviewer: str, event_id: str) -> bool:
    return _start_link(url, reviewer) == item_key(event_id)


def test_an_item_open_with_one_reviewer_is_skipped_for_another(
    broker: TansuBroker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("review-claims")
    topics = fresh_topics()
    bootstrap = broker.bootstrap_servers
    asyncio.run(ensure_topics(bootstrap, {topics.input: 1, topics.review: 1}))
    items = [("acme", f"c-{i}", png_bytes((i, i, i)), "suggestive") for i in range(1, 4)]
    asyncio.run(queue_items(bootstrap, topics, items))
    settings = review_settings(
        bootstrap,
        topics,
        write_policy(folder / "policy.yaml", topics),
        write_reviewers(
            folder / "reviewers.yaml",
            {name: (token, ["acme"]) for name, token in TOKENS.items()},
        ),
    )
    with review_page(settings) as first, review_page(settings) as second:
        for url in (first.url, second.url):
            wait_until(
                functools.partial(_starts_with, url, "rita", "c-1"), 30, "the queue never loaded"
            )
        # Rita opens the oldest on the first replica...
        opened = httpx.get(f"{first.url}/t/acme/items/{item_key('c-1')}", headers=_auth("rita"))
        assert opened.status_code == 200
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', opened.text)
        assert csrf is not None
        # ...and the second replica learns it from the claims topic: Tina starts with c-2.
        wait_until(
            lambda: _start_link(second.url, "tina") == item_key("c-2"),
            20,
            "the claim never reached the other replica",
        )
        tina_view = httpx.get(f"{second.url}/t/acme/items/{item_key('c-1')}", headers=_auth("tina"))
        assert "rita has this item open" in tina_view.text
        tina_csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', tina_view.text)
        assert tina_csrf is not None
        refused = httpx.post(
            f"{second.url}/t/acme/items/{item_key('c-1')}/verdict",
            data={"csrf": tina_csrf.group(1), "action": "allow"},
            headers=_auth("tina"),
        )
        assert refused.status_code == 409
        # Tina opens c-2; Rita's verdict on c-1 then takes her past it, to c-3.
        assert (
            httpx.get(
                f"{second.url}/t/acme/items/{item_key('c-2')}", headers=_auth("tina")
            ).status_code
            == 200
        )
        wait_until(
            lambda: "<td>tina</td>" in httpx.get(f"{first.url}/t/acme", headers=_auth("rita")).text,
            20,
            "tina's claim never reached the first replica",
        )
        done = httpx.post(
            f"{first.url}/t/acme/items/{item_key('c-1')}/verdict",
            data={"csrf": csrf.group(1), "action": "block"},
            headers=_auth("rita"),
        )
        assert done.status_code == 303
        assert done.headers["location"] == f"/t/acme/items/{item_key('c-3')}"
