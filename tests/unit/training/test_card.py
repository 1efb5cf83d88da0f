"""The model card's training summary is generated from the step reports, never written by
hand: numbers come from the JSON, a missing report says so, a broken one is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT
from training.card import BEGIN, END, CardError, main, summary, write_card

RESULTS = REPO_ROOT / "bench" / "results"
REPORTS = ("adaptation.json", "finetune.json", "audit.json", "pruning.json")


def test_every_row_comes_from_its_report() -> None:
    text = summary(RESULTS)
    finetune = json.loads((RESULTS / "finetune.json").read_text())
    macro = finetune["results"]["methods"]["finetuned"]["macro"]["value"]
    assert f"{macro:.3f}" in text
    adaptation = json.loads((RESULTS / "adaptation.json").read_text())
    assert ("rejected" in text) is not adaptation["decision"]["accepted"]
    pruning = json.loads((RESULTS / "pruning.json").read_text())
    for pruned in pruning["pruned"]:
        assert f"`{pruned['triton_model']}`" in text
    # Every row has the table's three cells: no unescaped pipe inside a cell.
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(REPORTS)
    assert all(line.replace("\\|", "").count("|") == 4 for line in rows)


def test_the_card_section_is_replaced_in_place_and_a_missing_report_says_so(
    tmp_path: Path,
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    for name in REPORTS[:3]:
        shutil.copy(RESULTS / name, results / name)
    card = tmp_path / "README.md"
    card.write_text(f"# Card\n\nbefore\n\n{BEGIN}\nold text\n{END}\n\nafter\n")
    write_card(card, results)
    once = card.read_text()
    assert "old text" not in once
    assert once.startswith("# Card\n\nbefore\n\n")
    assert once.endswith("\n\nafter\n")
    assert "not run (`pruning.json` missing)" in once
    write_card(card, results)
    assert card.read_text() == once


def test_a_broken_report_is_refused_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "audit.json").write_text('{"precision_at_k": {}}')
    with pytest.raises(CardError, match=r"audit\.json"):
        summary(tmp_path)
    card = tmp_path / "README.md"
    card.write_text("# Card\n")
    assert main(["--results", str(tmp_path), "--card", str(card)]) == 1
    assert capsys.readouterr().err.count("\n") == 1
