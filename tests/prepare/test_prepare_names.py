"""`histoseek prepare` prints paths and class names with square brackets as they are."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from synthetic_slides import he_image, save, truncated_png

from histoseek.cli import cli


def test_class_and_output_names_with_markup_are_shown_as_they_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths, short enough for the table title
    src = tmp_path / "src"
    for c, name in enumerate(("[red]stroma", "tumour]")):
        for i in range(2):
            save(src / name / f"img{i}.png", he_image(128, 128, seed=10 * c + i))
    truncated_png(src / "tumour]" / "broken[/b].png")
    out = Path("o[") / "x]"
    result = CliRunner(env={"COLUMNS": "250"}).invoke(
        cli, ["prepare", "folder", str(src), "-o", str(out), "--patch-size", "64", "--workers", "0"]
    )
    assert result.exit_code == 0, result.output
    assert f"patches in {out}" in result.stdout
    assert "[red]stroma" in result.stdout and "tumour]" in result.stdout
    assert f"listed in {out / 'skipped.txt'}" in result.stdout
