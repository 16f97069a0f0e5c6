"""Commands print paths with square brackets as they are: rich markup is off for them."""

from __future__ import annotations

from click.testing import CliRunner

from histoseek.cli import cli


def test_train_log_lines_print_names_with_brackets_as_they_are(tmp_path, monkeypatch):
    import histoseek.train

    def log_a_path(config, notify, **options):
        notify(f"data {config.data_dir}: [red]stroma, a[/b]c.tif")

    monkeypatch.setattr(histoseek.train, "train", log_a_path)
    data = tmp_path / "d[" / "x]"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
    result = CliRunner().invoke(cli, ["train", str(data), "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert f"data {data}: [red]stroma, a[/b]c.tif" in result.stderr
