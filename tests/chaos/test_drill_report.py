"""Drill reports without the `reports` extra: the PNG is skipped with a message that names the extra."""

import sys

import pytest

from chaos.drill import report as drill_report


def test_without_matplotlib_the_plot_says_which_extra_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without the extra looks like
    with pytest.raises(drill_report.PlotUnavailable, match=r"ringcast\[reports\]"):
        drill_report.plot(tmp_path / "t.png", {"timeline": {}, "marks": {}})
    assert not (tmp_path / "t.png").exists()
