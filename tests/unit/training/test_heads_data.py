"""Labelled data for heads: both forms load, every bad row is named on one line, all at once."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from consumer.imaging.fetch import ImageFetcher
from consumer.runtime.settings import ImagingSettings
from training.heads.data import load_dataset, main
from training.heads.folders import load_folder
from training.heads.labelled import DatasetError, LabelledImage, parse_categories
from training.heads.manifest import load_manifest

CATEGORIES = ("qr_solicitation", "contact_overlay")


def png(shade: int = 128) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 12), (shade, 40, 200)).save(out, format="PNG")
    return out.getvalue()


def write_manifest(folder: Path, rows: list[Any]) -> Path:
    """Rows are dicts (written as JSON) or raw strings (written as they are)."""
    manifest = folder / "manifest.jsonl"
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_a_folder_per_category_loads(tmp_path: Path) -> None:
    (tmp_path / "qr_solicitation" / "beach").mkdir(parents=True)
    (tmp_path / "none").mkdir()
    (tmp_path / "qr_solicitation" / "a.png").write_bytes(png(1))
    (tmp_path / "qr_solicitation" / "beach" / "b.png").write_bytes(png(2))
    (tmp_path / "none" / "beach" / "c.png").parent.mkdir()
    (tmp_path / "none" / "beach" / "c.png").write_bytes(png(3))
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "none" / ".hidden.png").write_bytes(b"\0")

    images = load_folder(tmp_path, categories=CATEGORIES)

    by_name = {Path(image.source).name: image for image in images}
    assert sorted(by_name) == ["a.png", "b.png", "c.png"]
    assert by_name["a.png"] == LabelledImage(
        image=png(1),
        labels=frozenset({"qr_solicitation"}),
        tenant=None,
        split=None,
        source=str(tmp_path / "qr_solicitation" / "a.png"),
        group=str(tmp_path / "qr_solicitation" / "a.png"),
    )
    # A sub-folder is a group, shared across categories: both crops of "beach" stay together.
    assert by_name["b.png"].group == by_name["c.png"].group == "beach"
    assert by_name["c.png"].labels == frozenset()


def test_a_manifest_loads_every_form_of_label(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    for name in ("a", "b", "c", "d"):
        (tmp_path / "imgs" / f"{name}.png").write_bytes(png())
    manifest = write_manifest(
        tmp_path,
        [
            {"image": "imgs/a.png", "label": "qr_solicitation", "split": "train", "group": "g1"},
            "",
            {"image": "imgs/b.png", "label": ["qr_solicitation", "contact_overlay"]},
            {"image": "imgs/c.png", "label": None, "tenant": "marketplace", "split": "test"},
            {"image": "./imgs/d.png", "label": [], "split": "val"},
        ],
    )

    images = load_manifest(manifest, categories=CATEGORIES)

    assert [(i.source, sorted(i.labels), i.tenant, i.split, i.group) for i in images] == [
        (f"{manifest}:1", ["qr_solicitation"], None, "train", "g1"),
        (f"{manifest}:3", ["contact_overlay", "qr_solicitation"], None, None, "imgs/b.png"),
        (f"{manifest}:4", [], "marketplace", "test", "imgs/c.png"),
        (f"{manifest}:5", [], None, "val", "./imgs/d.png"),
    ]
    assert all(image.image == png() for image in images)
    # A folder holding manifest.jsonl is read as the manifest, not as category folders.
    assert load_dataset(tmp_path) == images


BAD_ROWS = [
    pytest.param({"image": "x.png", "label": None}, "image 'x.png' not found", id="missing-file"),
    pytest.param(
        {"image": "broken.png", "label": None},
        "image 'broken.png' does not decode (image_",
        id="undecodable",
    ),
    pytest.param(
        {"image": "ok.png", "label": "weapons"},
        "label 'weapons' is not one of the categories given (contact_overlay, qr_solicitation)",
        id="unknown-label",
    ),
    pytest.param('{"image": "ok.png",, "label": null}', "not valid JSON (", id="bad-json"),
    pytest.param('["ok.png"]', "expected a JSON object, got list", id="not-an-object"),
    pytest.param(
        {"image": "ok.png", "labels": "qr_solicitation", "label": None},
        "unknown field 'labels' (a row has image, label, tenant, split, group)",
        id="unknown-field",
    ),
    pytest.param(
        {"image": "ok.png"}, "'label' is missing (null or [] marks a negative)", id="no-label"
    ),
    pytest.param(
        {"image": "ok.png", "label": None, "split": "dev"},
        "split 'dev' is not one of train, val, test",
        id="bad-split",
    ),
    pytest.param(
        {"image": "ok.png", "label": "Weapons"},
        "label 'Weapons' is not a category name (a lowercase letter, then up to 63 lowercase "
        "letters, digits or '_')",
        id="bad-category-name",
    ),
    pytest.param(
        {"image": "ok.png", "label": "none"},
        "label 'none' is reserved for negatives; give null or [] instead",
        id="reserved-label",
    ),
    pytest.param(
        {"image": "ok.png", "label": None, "tenant": "Big Shop"},
        "tenant 'Big Shop' is not a tenant name",
        id="bad-tenant",
    ),
    pytest.param(
        {"image": "../secret.png", "label": None},
        "image '../secret.png' is outside the manifest's folder",
        id="outside-folder",
    ),
    pytest.param(
        {"image": "file:///etc/passwd", "label": None},
        "image 'file:///etc/passwd': only http(s) URLs or paths relative to the manifest",
        id="other-scheme",
    ),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS)
def test_a_bad_row_is_named_on_one_line(tmp_path: Path, row: Any, message: str) -> None:
    (tmp_path / "ok.png").write_bytes(png())
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    manifest = write_manifest(tmp_path, [{"image": "ok.png", "label": None}, row])

    with pytest.raises(DatasetError) as caught:
        load_manifest(manifest, categories=CATEGORIES)

    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"{manifest}:2: {message}")
    assert caught.value.problems == (text,)


def test_a_repeated_image_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ok.png").write_bytes(png())
    manifest = write_manifest(
        tmp_path,
        [{"image": "ok.png", "label": "qr_solicitation"}, {"image": "ok.png", "label": None}],
    )
    with pytest.raises(DatasetError, match=re.escape(":2: image 'ok.png' is listed again")):
        load_manifest(manifest)


def test_every_bad_row_is_reported_together_in_file_order(tmp_path: Path) -> None:
    (tmp_path / "ok.png").write_bytes(png())
    (tmp_path / "broken.png").write_bytes(b"GIF89a")
    rows: list[Any] = [
        {"image": "missing.png", "label": None},
        {"image": "ok.png", "label": "qr_solicitation"},
        "{not json",
        {"image": "broken.png", "label": None},
        {"image": "ok2.png", "label": "x", "colour": "red"},
        {"image": "ok3.png", "label": None, "split": "holdout"},
        {"image": "ok4.png", "label": "Bad"},
        {"image": "ok5.png", "label": "weapons"},
        {"image": "gone.png", "label": []},
    ]
    manifest = write_manifest(tmp_path, rows)

    with pytest.raises(DatasetError) as caught:
        load_manifest(manifest, categories=CATEGORIES)

    problems = caught.value.problems
    assert [p.split(": ")[0] for p in problems] == [
        f"{manifest}:{line}" for line in (1, 3, 4, 5, 6, 7, 8, 9)
    ]
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"8 bad rows in {manifest}: {problems[0]}; {problems[1]}")
    assert text.endswith("; and 3 more")


def test_folder_problems_are_reported_together(tmp_path: Path) -> None:
    for folder in ("Weapons", "weapons", "empty", "qr_solicitation"):
        (tmp_path / folder).mkdir()
    (tmp_path / "weapons" / "a.png").write_bytes(png())
    (tmp_path / "qr_solicitation" / "notes.txt").write_text("hello")
    (tmp_path / "qr_solicitation" / "broken.jpg").write_bytes(b"\xff\xd8\xffnope")
    (tmp_path / "stray.png").write_bytes(png())

    with pytest.raises(DatasetError) as caught:
        load_folder(tmp_path, categories=["qr_solicitation", "empty"])

    expected = [
        f"{tmp_path / 'Weapons'}: folder 'Weapons' is not a category name (a lowercase "
        "letter, then up to 63 lowercase letters, digits or '_')",
        f"{tmp_path / 'empty'}: no images",
        f"{tmp_path / 'qr_solicitation' / 'broken.jpg'}: image 'broken.jpg' does not decode "
        "(image_corrupt: ",
        f"{tmp_path / 'qr_solicitation' / 'notes.txt'}: not an image file (.jpg, .jpeg, .png, "
        ".webp, .gif, .bmp, .tif, .tiff)",
        f"{tmp_path / 'stray.png'}: a file outside the category folders",
        f"{tmp_path / 'weapons'}: folder 'weapons' is not one of the categories given "
        "(empty, qr_solicitation)",
    ]
    problems = sorted(caught.value.problems)
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start)


def test_an_empty_set_is_refused(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, [""])
    with pytest.raises(DatasetError, match="no labelled images"):
        load_manifest(manifest)
    with pytest.raises(DatasetError, match="not found or not a folder"):
        load_folder(tmp_path / "missing")


def test_urls_are_fetched_through_the_service_fetcher(tmp_path: Path) -> None:
    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/a.png":
            return httpx.Response(200, content=png(9))
        return httpx.Response(404)

    fetcher = ImageFetcher(ImagingSettings(), transport=httpx.MockTransport(serve))
    good = write_manifest(tmp_path, [{"image": "https://img.example/a.png", "label": None}])
    [image] = load_manifest(good, fetcher=fetcher)
    assert image.image == png(9)
    assert image.group == "https://img.example/a.png"

    bad = write_manifest(tmp_path, [{"image": "https://img.example/gone.png", "label": None}])
    fetcher = ImageFetcher(ImagingSettings(), transport=httpx.MockTransport(serve))
    with pytest.raises(
        DatasetError,
        match=r":1: image 'https://img\.example/gone\.png' cannot be "
        r"fetched \(image_fetch_http_4xx: ",
    ):
        load_manifest(bad, fetcher=fetcher)


def test_the_egress_guard_refuses_private_hosts(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, [{"image": "http://127.0.0.1:9/x.png", "label": None}])
    with pytest.raises(DatasetError, match=r":1: .* cannot be fetched \(image_url_blocked: "):
        load_manifest(manifest)


def test_categories_are_checked_names() -> None:
    assert parse_categories("qr_solicitation, contact_overlay") == frozenset(CATEGORIES)
    with pytest.raises(DatasetError, match="category 'Bad' is not a category name"):
        parse_categories(["Bad", "ok"])
    with pytest.raises(DatasetError, match="no category names"):
        parse_categories("")


def test_the_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ok.png").write_bytes(png())
    manifest = write_manifest(
        tmp_path, [{"image": "ok.png", "label": "qr_solicitation", "tenant": "shop"}]
    )
    assert main([str(manifest), "--categories", "qr_solicitation"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == {"qr_solicitation": 1}

    assert main([str(manifest), "--categories", "contact_overlay"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"labelled set refused: {manifest}:1: label 'qr_solicitation' is not")
