"""The demo set: the same bytes for a seed, held-out factors held out, codes that scan."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from faker import Faker
from faker.providers import date_time as faker_dates

from tests.support.paths import REPO_ROOT
from training.heads.demo_negatives import WORDS
from training.heads.demo_plan import CATEGORIES, NEGATIVE_KINDS, TENANTS, TEST, TRAIN
from training.heads.demo_scenes import FAKER_LOCALES
from training.heads.demo_set import generate, main
from training.heads.manifest import load_manifest

PER_CLASS = 4


def files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate(out, seed=7, test_per_class=PER_CLASS, train_per_class=PER_CLASS, workers=1)
    return out


class _Later(datetime):
    """A clock years ahead, for Faker: its dates are drawn relative to now."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> _Later:
        return cls(2041, 5, 6, 7, 8, 9, tzinfo=tz)


def test_a_seed_gives_the_same_bytes_whatever_the_workers_and_the_day(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set before the workers fork, so they see the later clock too.
    monkeypatch.setattr(faker_dates, "datetime", _Later)
    again = tmp_path / "again"
    generate(again, seed=7, test_per_class=PER_CLASS, train_per_class=PER_CLASS, workers=2)
    assert files(again) == files(demo)


def draw_words(count: int) -> list[str]:
    """Every kind of text the scenes write, ``count`` times, from fixed seeds."""
    fake = Faker(list(FAKER_LOCALES))
    drawn: list[str] = []
    for number in range(count):
        rng = random.Random(number)
        fake.seed_instance(number)
        drawn.extend(f"{name}: {words(fake, rng)!r}" for name, words in WORDS.items())
    return drawn


_OTHER_RUN = """
import json, sys
from pathlib import Path
from tests.unit.training.test_demo_set import PER_CLASS, draw_words
from training.heads.demo_set import generate
generate(Path(sys.argv[1]), seed=7, test_per_class=PER_CLASS, train_per_class=PER_CLASS, workers=1)
Path(sys.argv[2]).write_text(json.dumps(draw_words(300)))
"""


def test_a_seed_gives_the_same_bytes_in_another_python_run(demo: Path, tmp_path: Path) -> None:
    # Other string hashes: set orders, which some Faker locales build word lists from (it_IT's
    # cities), must not reach the images. The words are drawn many times to meet such lists.
    out, words = tmp_path / "run", tmp_path / "words.json"
    hashes = "1" if os.environ.get("PYTHONHASHSEED") == "0" else "0"
    subprocess.run(
        [sys.executable, "-c", _OTHER_RUN, str(out), str(words)],
        env={**os.environ, "PYTHONHASHSEED": hashes},
        check=True,
        cwd=REPO_ROOT,
    )
    assert files(out) == files(demo)
    assert json.loads(words.read_text()) == draw_words(300)


def test_another_seed_gives_other_images(demo: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate(other, seed=8, test_per_class=1, train_per_class=1, workers=1)
    assert not set(files(other / "images").values()) & set(files(demo / "images").values())


def test_every_category_is_in_both_splits_with_its_tenant(demo: Path) -> None:
    rows = jsonl(demo / "manifest.jsonl")
    for split in ("train", "test"):
        labels = [row["label"] for row in rows if row["split"] == split]
        for category in CATEGORIES:
            assert labels.count(category) == PER_CLASS
        assert labels.count(None) == 2 * PER_CLASS
    expected: dict[str | None, str | None] = {None: None}
    expected.update(TENANTS)
    assert {row["label"]: row["tenant"] for row in rows} == expected
    kinds = {row["kind"] for row in jsonl(demo / "factors.jsonl")}
    assert set(NEGATIVE_KINDS) <= kinds


def test_splits_share_no_group_background_font_or_qr_style(demo: Path) -> None:
    rows = jsonl(demo / "manifest.jsonl")
    factors = jsonl(demo / "factors.jsonl")
    seen: dict[str, dict[str, set[str]]] = {"train": {}, "test": {}}
    for row, factor in zip(rows, factors, strict=True):
        assert row["image"] == factor["image"]
        used = seen[row["split"]]
        used.setdefault("group", set()).add(row["group"])
        used.setdefault("background", set()).add(factor["background"])
        used.setdefault("font", set()).update(factor["fonts"])
        if factor["qr_style"] is not None:
            used.setdefault("qr_style", set()).add(factor["qr_style"])
    for name in ("group", "background", "font", "qr_style"):
        assert seen["train"][name], name
        assert seen["test"][name], name
        assert not seen["train"][name] & seen["test"][name], name
    held_out = json.loads((demo / "metadata.json").read_text())["held_out"]
    assert set(held_out["test"]["fonts"]) >= seen["test"]["font"]


def test_the_split_definitions_hold_out_every_qr_attribute() -> None:
    assert not set(TRAIN.backgrounds) & set(TEST.backgrounds)
    assert not set(TRAIN.fonts) & set(TEST.fonts)
    for attribute in ("id", "generator", "error", "border", "dark", "light"):
        train = {getattr(style, attribute) for style in TRAIN.qr_styles}
        test = {getattr(style, attribute) for style in TEST.qr_styles}
        assert not train & test, attribute


def test_qr_codes_scan(demo: Path) -> None:
    decoded = 0
    detector = cv2.QRCodeDetector()
    for factor in jsonl(demo / "factors.jsonl"):
        if factor["payload"] is None:
            continue
        pixels = cv2.imdecode(
            np.frombuffer((demo / factor["image"]).read_bytes(), np.uint8), cv2.IMREAD_COLOR
        )
        text, _points, _ = detector.detectAndDecode(pixels)
        decoded += text == factor["payload"]
    assert decoded >= PER_CLASS
    metadata = json.loads((demo / "metadata.json").read_text())
    assert metadata["qr_decode"]["codes"] == PER_CLASS
    assert metadata["qr_decode"]["decoded"] >= 1


def test_the_manifest_loads_as_labelled_data(demo: Path) -> None:
    images = load_manifest(demo / "manifest.jsonl", categories=CATEGORIES)
    assert len(images) == 2 * (len(CATEGORIES) + 2) * PER_CLASS
    sizes = set()
    for image in images:
        assert image.split in ("train", "test")
        sizes.add(len(image.image))
    assert len(sizes) > len(images) // 2


def test_the_command_refuses_a_folder_that_holds_other_things(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"demo set failed: {tmp_path} is not empty and holds no demo set; give an empty folder\n"
    )
    assert main(["--out", str(demo), "--no-progress", "--test-per-class", "1"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err


def test_the_command_replaces_an_earlier_set(tmp_path: Path) -> None:
    out = tmp_path / "set"
    args = ["--out", str(out), "--test-per-class", "1", "--train-per-class", "1", "--workers", "1"]
    assert main([*args, "--no-progress"]) == 0
    assert main([*args, "--no-progress", "--overwrite", "--seed", "3"]) == 0
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["seed"] == 3
    assert len(jsonl(out / "manifest.jsonl")) == len(files(out / "images"))
