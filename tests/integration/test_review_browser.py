"""A reviewer in a real browser (Debian's chromium, headless, driven by Selenium): signs in,
opens a tenant's queue, looks at a heat map and clears the queue with the keyboard alone;
the verdicts are then read from the labels topic.

Screenshots of the queue and of an item with its heat map are written to the test's folder,
and to docs/images/ when MODSTREAM_DOC_SCREENSHOTS=1 (how the docs' pictures are made).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from bench.local.tansu import TansuBroker, ensure_topics
from bench.samples import photo_image
from consumer.contract.events import Action, Decision, ModelRef, Reason, ReviewVerdict
from consumer.moderation.policy import THRESHOLD_RULE
from consumer.review.queue import item_key
from tests.support.heads import qr_composite
from tests.support.kafka_io import read_until
from tests.support.paths import REPO_ROOT, TRITON_REPO
from tests.support.review import (
    answered,
    fresh_topics,
    queue_items,
    review_page,
    review_settings,
    write_policy,
    write_reviewers,
)

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "reviewer-in-a-browser"
WAIT_S = 20


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.fail("chromium is missing: run ./scripts/setup.sh (apt: chromium chromium-driver)")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1360,920",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _jpeg(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _with_heads(decision: Decision) -> Decision:
    """m-1 was sent to review by the platform's QR-code head (heads version 1)."""
    if decision.event_id != "m-1":
        return decision
    return decision.model_copy(
        update={
            "scores": {**decision.scores, "qr_solicitation": 0.93},
            "reasons": [
                Reason(
                    rule=THRESHOLD_RULE,
                    action=Action.REVIEW,
                    category="qr_solicitation",
                    score=0.93,
                    threshold=0.5,
                )
            ],
            "model": ModelRef(
                name="nsfw_mobilenet_v2", version="1", heads_model="heads", heads_version="1"
            ),
        }
    )


def _press(driver: WebDriver, key: str) -> None:
    ActionChains(driver).send_keys(key).perform()


def _until_url(driver: WebDriver, fragment: str) -> None:
    WebDriverWait(driver, WAIT_S).until(lambda d: d.current_url.endswith(fragment))


def test_a_reviewer_clears_a_queue_by_keyboard(
    broker: TansuBroker, browser: WebDriver, tmp_path: Path
) -> None:
    topics = fresh_topics()
    asyncio.run(
        ensure_topics(
            broker.bootstrap_servers, {topics.input: 1, topics.review: 1, topics.labels: 1}
        )
    )
    items = [
        ("marketplace", "m-1", qr_composite("chelsea", seed=3), "qr_solicitation"),
        ("marketplace", "m-2", _jpeg(photo_image("astronaut")), "suggestive"),
        ("marketplace", "m-3", _jpeg(photo_image("coffee")), None),
    ]
    asyncio.run(
        queue_items(
            broker.bootstrap_servers,
            topics,
            items,
            metadata={"uploader": "user-4821"},
            adjust=_with_heads,
        )
    )
    policy = write_policy(tmp_path / "policy.yaml", topics)
    reviewers = write_reviewers(tmp_path / "reviewers.yaml", {"rita": (TOKEN, ["marketplace"])})
    settings = review_settings(
        broker.bootstrap_servers, topics, policy, reviewers, saliency_repository=TRITON_REPO
    )
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with review_page(settings) as page:
        # The page answers 503 until its queue is loaded; a browser would not reload by itself.
        ready = answered(
            lambda: httpx.get(f"{page.url}/", headers={"Authorization": f"Bearer {TOKEN}"}), 30
        )
        assert ready.status_code == 200
        driver = browser
        driver.get(f"{page.url}/login")
        driver.find_element(By.ID, "token").send_keys(TOKEN + "\n")
        _until_url(driver, "/")
        WebDriverWait(driver, WAIT_S).until(
            lambda d: "marketplace" in d.find_element(By.TAG_NAME, "main").text
        )
        driver.find_element(By.LINK_TEXT, "marketplace").click()
        _until_url(driver, "/t/marketplace")
        assert "3 waiting" in driver.find_element(By.TAG_NAME, "h1").text
        driver.save_screenshot(str(shots / "review-queue.png"))

        _press(driver, "\ue007")  # Enter: start with the oldest
        _until_url(driver, f"/t/marketplace/items/{item_key('m-1')}")
        _press(driver, "h")
        WebDriverWait(driver, WAIT_S).until(
            lambda d: d.execute_script(
                "const h = document.getElementById('heat');"
                "return h && !h.hidden && h.complete && h.naturalWidth > 0;"
            )
        )
        assert "qr_solicitation" in driver.find_element(By.ID, "heat-category").text
        driver.save_screenshot(str(shots / "review-item-heatmap.png"))

        _press(driver, "b")  # m-1: block
        _until_url(driver, f"/items/{item_key('m-2')}")
        _press(driver, "j")  # look ahead at m-3, then back
        _until_url(driver, f"/items/{item_key('m-3')}")
        _press(driver, "k")
        _until_url(driver, f"/items/{item_key('m-2')}")
        first_value = driver.find_element(By.CSS_SELECTOR, "[data-key='1']").get_attribute("value")
        category_label = driver.find_element(By.CSS_SELECTOR, "[data-key='1']").text
        _press(driver, "1")  # m-2: block as the first category
        _until_url(driver, f"/items/{item_key('m-3')}")
        _press(driver, "a")  # m-3: allow
        _until_url(driver, "/t/marketplace")
        assert "Nothing waiting" in driver.find_element(By.TAG_NAME, "main").text

    assert first_value == "block"
    labels = asyncio.run(read_until(broker.bootstrap_servers, [topics.labels], 3, 20))
    verdicts = {
        v.event_id: v for v in (ReviewVerdict.model_validate_json(m.value or b"") for m in labels)
    }
    assert len(labels) == 3, "each key press posted exactly one verdict"
    assert (verdicts["m-1"].action, verdicts["m-1"].category) == (Action.BLOCK, None)
    assert verdicts["m-2"].action is Action.BLOCK
    assert verdicts["m-2"].category is not None
    assert category_label.startswith(f"Block as {verdicts['m-2'].category}")
    assert (verdicts["m-3"].action, verdicts["m-3"].category) == (Action.ALLOW, None)
    assert {v.reviewer_id for v in verdicts.values()} == {"rita"}

    for name in ("review-queue.png", "review-item-heatmap.png"):
        with Image.open(shots / name) as shot:
            colours = shot.convert("RGB").resize((64, 64)).getcolors(64 * 64) or []
            assert len(colours) > 20, f"{name} looks blank"
        if os.environ.get("MODSTREAM_DOC_SCREENSHOTS") == "1":
            shutil.copyfile(shots / name, REPO_ROOT / "docs" / "images" / name)
