"""The benchmarks page is generated from the committed results."""

import pathlib

import pytest

from benchmarks import report


def test_the_benchmarks_page_is_up_to_date():
  # Fails when a result was committed without `python -m benchmarks.report`.
  assert report.PAGE.read_text() == report.render()


def test_every_report_on_the_page_exists_and_names_date_and_machine():
  for section in report.SECTIONS:
    for path in section.reports:
      text = (report.ROOT / path).read_text()
      assert report._DATE.search(text), path


def test_include_fits_a_report_into_the_page(tmp_path):
  folder = tmp_path / "results" / "run"
  folder.mkdir(parents=True)
  (folder / "r.md").write_text(
    "# Title\n\nDate: 2026-01-02. Machine: a CPU.\n\n## (a) part\n\n"
    "![plot](plot.png) and [site](https://example.org)\n"
  )
  (folder / "r_notes.md").write_text("Read [the table](table.md).\n")
  text = report.include("results/run/r.md", root=tmp_path)
  assert text.splitlines()[0] == "Date: 2026-01-02. Machine: a CPU."
  assert "#### (a) part" in text and "# Title" not in text
  assert "![plot](results/run/plot.png)" in text
  assert "[site](https://example.org)" in text
  assert text.endswith("Read [the table](results/run/table.md).")


def test_a_report_without_date_and_machine_is_refused(tmp_path):
  (tmp_path / "r.md").write_text("# Title\n\nsome table\n")
  with pytest.raises(ValueError, match="date and machine"):
    report.include("r.md", root=tmp_path)


def test_check_flag_reports_a_stale_page(tmp_path, monkeypatch):
  page = tmp_path / "benchmarks.md"
  page.write_text("old\n")
  monkeypatch.setattr(report, "PAGE", page)
  assert report.main(["--check"]) == 1
  assert report.main([]) == 0 and report.main(["--check"]) == 0
  assert page.read_text() == report.render()
  assert pathlib.Path(report.PAGE) == page
