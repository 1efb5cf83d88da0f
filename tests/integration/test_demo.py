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
            "90",
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
    assert decided == 90, summaries[-1]
    rows = {
        m.group(1): tuple(int(n) for n in m.group(2, 3, 4))
        for m in re.finditer(r"([a-z-]+) +(\d+) +(\d+) +(\d+)", summaries[-1])
    }
    assert set(rows) == {"kids-app", "art-gallery", "acme"}
    assert all(sum(counts) == 30 for counts in rows.values())
    # The same images, three policies: the strict tenant blocks, the art tenant never does.
    assert rows["kids-app"][2] > 0
    assert rows["art-gallery"][2] == 0
    assert "demo stopped" in result.stdout
