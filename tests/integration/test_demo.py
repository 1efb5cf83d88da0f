from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_headless_and_exits_cleanly() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "consumer",
            "demo",
            "--duration",
            "12",
            "--headless",
            "--events",
            "96",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = [line for line in result.stdout.splitlines() if line.startswith("modstream demo")]
    assert summaries, result.stdout
    decided = int(re.search(r"decided (\d+)", summaries[-1]).group(1))  # type: ignore[union-attr]
    assert decided == 96, summaries[-1]
    rows = {
        m.group(1): tuple(int(n) for n in m.group(2, 3, 4))
        for m in re.finditer(r"([a-z-]+) +(\d+) +(\d+) +(\d+)", summaries[-1])
    }
    # setup.sh trains the demo heads, so the tenant with its own payment_card head is there.
    assert set(rows) == {"kids-app", "art-gallery", "acme", "tickets"}
    assert all(sum(counts) == 24 for counts in rows.values())
    # The same images, three policies: the strict tenant blocks, the art tenant never does.
    assert rows["kids-app"][2] > 0
    assert rows["art-gallery"][2] == 0
    # Payment-card photos: blocked by the tenant that taught its own head, by nobody else.
    heads_line = re.search(r"payment_card photos.*?: (.*?) \|", summaries[-1])
    assert heads_line is not None, summaries[-1]
    cards = {
        m.group(1): tuple(int(n) for n in m.group(2, 3, 4))
        for m in re.finditer(r"([a-z-]+) (\d+)/(\d+)/(\d+)", heads_line.group(1))
    }
    assert cards["tickets"][2] > 0
    assert all(counts[2] == 0 for tenant, counts in cards.items() if tenant != "tickets")
    assert "demo stopped" in result.stdout
