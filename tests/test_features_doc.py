"""features/FEATURES.md is the generated FEATURES table, never a stale copy of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachewise.features.spec import FEATURE_NAMES, features_markdown, main

FEATURES_MD = Path(__file__).resolve().parents[1] / "features" / "FEATURES.md"
REGENERATE = "python -m cachewise.features.spec --markdown > features/FEATURES.md"


def test_committed_features_md_equals_the_generated_table() -> None:
    committed = FEATURES_MD.read_text(encoding="utf-8")
    assert committed == features_markdown(), f"features/FEATURES.md is stale: {REGENERATE}"


def test_the_table_has_one_row_per_feature_in_model_column_order() -> None:
    rows = [line for line in features_markdown().splitlines() if line.startswith("| ") and "`" in line]
    assert [row.split(" | ")[1].strip("`") for row in rows] == list(FEATURE_NAMES)
    assert all(row.count(" | ") == 4 for row in rows)  # five cells: no unescaped pipe in a description


def test_cli_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--markdown"]) == 0
    assert capsys.readouterr().out == features_markdown()
    with pytest.raises(SystemExit):
        main([])
