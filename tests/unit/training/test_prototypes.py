"""Labelled sets for prototypes: folders are validated, the built-in drawings are stable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from consumer.banks.store import unit
from training.nsfwjs.errors import ImportFailed
from training.prototypes import (
    LabelledImage,
    clipart,
    decoded,
    encode,
    labelled_folder,
    leave_one_source_out,
)


def test_a_labelled_folder_is_read_per_category(tmp_path: Path) -> None:
    (tmp_path / "safe").mkdir()
    (tmp_path / "safe_drawing").mkdir()
    (tmp_path / "safe" / "a.png").write_bytes(encode(clipart(1)))
    (tmp_path / "safe" / "notes.txt").write_text("ignored")
    (tmp_path / "safe_drawing" / "b.png").write_bytes(encode(clipart(2)))
    images = labelled_folder(tmp_path)
    assert [(i.category, Path(i.source).name) for i in images] == [
        ("safe", "a.png"),
        ("safe_drawing", "b.png"),
    ]


def test_an_unknown_category_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "violence").mkdir()
    with pytest.raises(ImportFailed, match="'violence' is not a category; name the folders"):
        labelled_folder(tmp_path)


def test_an_empty_or_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImportFailed, match="no labelled images"):
        labelled_folder(tmp_path)
    with pytest.raises(ImportFailed, match="not a folder"):
        labelled_folder(tmp_path / "missing")


def test_an_undecodable_image_is_named() -> None:
    broken = LabelledImage("safe", "labelled/safe/broken.jpg", b"\xff\xd8not a jpeg")
    with pytest.raises(ImportFailed, match=r"labelled/safe/broken\.jpg: cannot be used"):
        decoded([broken], 224)


def test_clipart_is_deterministic_per_seed() -> None:
    assert encode(clipart(7)) == encode(clipart(7))
    assert encode(clipart(7)) != encode(clipart(8))


def test_leave_one_source_out_excludes_the_held_out_source() -> None:
    embeddings = unit(np.array([[1, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float32))
    images = [
        LabelledImage("safe", "a", b""),
        LabelledImage("safe", "a", b""),
        LabelledImage("safe", "b", b""),
        LabelledImage("safe_drawing", "c", b""),
    ]
    held = leave_one_source_out(embeddings, images)
    # Source a against b's prototype (orthogonal), then b against a's.
    assert held == {"safe": [0.0, 0.0, 0.0]}
