"""The benchmark's raw-image records and loop-lag figures, without a broker or Triton."""

from __future__ import annotations

import base64

import pytest

from bench.e2e.consumers import loop_lag
from bench.e2e.images import BenchImage, generate_images
from bench.e2e.naive import read_image
from bench.e2e.publish import RAW_CONTENT_TYPE, outgoing
from bench.e2e.stages import per_event_costs
from consumer.contract.parse import parse_record
from consumer.imaging.decode import ImageLimits
from consumer.runtime.settings import Settings

JPEG = b"\xff\xd8\xff\xe0 not really a JPEG"


@pytest.fixture(scope="module")
def images() -> list[BenchImage]:
    return generate_images(0.05)


def test_a_raw_record_carries_the_jpeg_as_its_value_and_the_event_in_headers() -> None:
    record = outgoing(JPEG, "acme", "e2e-000007", raw=True)

    assert record.value == JPEG
    assert record.key == b"e2e-000007"
    assert dict(record.headers)["content-type"] == RAW_CONTENT_TYPE.encode()
    parsed = parse_record(record.value, record.headers)
    assert parsed.image == JPEG
    assert (parsed.event.event_id, parsed.event.tenant_id) == ("e2e-000007", "acme")


def test_a_json_record_carries_the_jpeg_as_base64_and_no_headers() -> None:
    record = outgoing(JPEG, "acme", "e2e-000007", raw=False)

    assert record.headers == []
    parsed = parse_record(record.value, record.headers)
    assert parsed.image is None
    assert base64.b64decode(parsed.event.image_b64 or "") == JPEG


@pytest.mark.parametrize("raw", [False, True])
def test_the_baselines_read_the_same_image_from_either_form(raw: bool) -> None:
    record = outgoing(JPEG, "kids-app", "e2e-000001", raw=raw)
    limits = ImageLimits.from_settings(Settings().imaging)

    event, data = read_image(record.value, record.headers, limits)

    assert data == JPEG
    assert event.event_id == "e2e-000001"


def test_raw_records_cost_no_base64_alone(images: list[BenchImage]) -> None:
    limits = ImageLimits.from_settings(Settings().imaging)

    raw = per_event_costs(images, 224, limits, rounds=1, raw=True)
    json = per_event_costs(images, 224, limits, rounds=1, raw=False)

    assert raw["decode_base64_cpu_ms"] == raw["decode_base64_ms"] == 0.0
    assert json["decode_base64_ms"] > 0
    assert raw["decode_image_cpu_ms"] > 0
    assert raw["parse_event_cpu_ms"] >= 0


def test_loop_lag_is_the_mean_and_the_share_above_the_bucket() -> None:
    lag = loop_lag(total_s=2.0, wakeups=40, on_time=30)

    assert lag.wakeups == 40
    assert lag.mean_ms == pytest.approx(50.0)
    assert lag.over_100ms_share == pytest.approx(0.25)


def test_no_wake_ups_means_no_loop_lag_figures() -> None:
    lag = loop_lag(total_s=0.0, wakeups=0, on_time=0)

    assert (lag.wakeups, lag.mean_ms, lag.over_100ms_share) == (0, None, None)
