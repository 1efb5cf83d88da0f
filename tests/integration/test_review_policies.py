"""The review page follows pushed tenant policies as the consumer does: a tenant whose pushed
policy routes its allows elsewhere gets its reviewers' final decisions there."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest

from bench.local.tansu import TansuBroker, ensure_topics
from consumer.contract.events import Action, Decision
from consumer.review.queue import item_key
from consumer.runtime.settings import PolicySettings
from tests.support.kafka_io import produce_positions, read_until
from tests.support.review import (
    answered,
    fresh_topics,
    png_bytes,
    queue_items,
    review_page,
    review_settings,
    write_policy,
    write_reviewers,
)

pytestmark = pytest.mark.integration

TOKEN = "policy-reviewer"


def test_final_decisions_follow_a_pushed_tenant_policy(
    broker: TansuBroker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("review-policies")
    topics = fresh_topics()
    policy_topic = f"{topics.input}.policies"
    pushed_allow = f"{topics.allow}.acme"
    bootstrap = broker.bootstrap_servers
    asyncio.run(
        ensure_topics(
            bootstrap,
            {topics.input: 1, topics.review: 1, topics.labels: 1, policy_topic: 1, pushed_allow: 1},
        )
    )
    asyncio.run(
        produce_positions(
            bootstrap,
            policy_topic,
            [(b"acme", json.dumps({"topics": {"allow": pushed_allow}}).encode(), [])],
        )
    )
    asyncio.run(queue_items(bootstrap, topics, [("acme", "p-1", png_bytes((9, 9, 9)), "x")]))
    base = review_settings(
        bootstrap,
        topics,
        write_policy(folder / "policy.yaml", topics),
        write_reviewers(folder / "reviewers.yaml", {"rita": (TOKEN, ["acme"])}),
    )
    settings = base.model_copy(
        update={
            "policy": PolicySettings(path=base.policy.path, reload_interval_s=0, topic=policy_topic)
        }
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with review_page(settings) as page:
        item = answered(
            lambda: httpx.get(f"{page.url}/t/acme/items/{item_key('p-1')}", headers=auth), 20
        )
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', item.text)
        assert csrf is not None
        posted = httpx.post(
            f"{page.url}/t/acme/items/{item_key('p-1')}/verdict",
            data={"csrf": csrf.group(1), "action": "allow"},
            headers=auth,
        )
        assert posted.status_code == 303
    routed = asyncio.run(read_until(bootstrap, [pushed_allow, topics.allow], 1, 20))
    assert [m.topic for m in routed] == [pushed_allow]
    final = Decision.model_validate_json(routed[0].value or b"")
    assert final.event_id == "p-1"
    assert final.action is Action.ALLOW
