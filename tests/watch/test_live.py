"""study/watch/live.py: the report of a running study, rewritten at most every 30 s, scripted with a clock."""

import json
import threading

from study.analysis.page import REPORT_FILE, write_report
from study.analysis.results import trials_table, write_tables
from study.watch import live as live_module
from study.watch.live import LiveReport
from tests.helpers import history
from tests.watch.clock import Clock


def test_live_report_is_partial_reloads_and_is_rewritten_at_most_every_30_s(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"space": {"name": "live", "num_samples": 1}}))
    records = [
        {
            "trial_id": f"t{i}",
            "config": {"unfreeze_depth": i, "epochs": 3},
            "history": history([0.5, 0.6, 0.6 + i / 20]),
        }
        for i in range(4)
    ]
    for record in records:
        record.update(error=None, max_epochs=3)
    clock = Clock()
    live = LiveReport(out, total=5, clock=clock)
    live.start()
    live.wait()
    page = (out / REPORT_FILE).read_text()
    assert "No trial has finished yet" in page and '<meta http-equiv="refresh" content="30">' in page

    def finish(count: int, now: float) -> str:
        clock.now = now
        write_tables(out, *trials_table(records[:count]))
        live.trial_finished(count)
        live.wait()
        return (out / REPORT_FILE).read_text()

    clock.now = 29
    live.update()
    live.wait()
    assert (out / REPORT_FILE).read_text() == page  # nothing new
    page = finish(1, 30)
    assert "Partial report: the study is still running" in page and "1 trial(s) finished, 4 still to come" in page
    assert '<meta http-equiv="refresh" content="30">' in page and "t0" in page
    assert "did not record a finish" not in page  # the banner says it better
    assert finish(2, 45) == page  # 15 s after the last write: not yet
    clock.now = 59
    live.update()
    live.wait()
    assert (out / REPORT_FILE).read_text() == page
    clock.now = 60
    live.update()  # 30 s on: the trial that finished at 45 s appears
    live.wait()
    page = (out / REPORT_FILE).read_text()
    assert "2 trial(s) finished, 3 still to come" in page and "t1" in page
    final = write_report(out).read_text()  # what study/cli/run/finish.py writes at the end
    assert "http-equiv" not in final and "Partial report" not in final


def test_the_page_is_drawn_off_the_callers_thread_and_never_after_close(tmp_path, monkeypatch):
    """Ray's driver loop calls `update`: it must not wait while a page is drawn (0.5 s and more), and once the study
    ended (`close`) no live page may replace the final report."""
    out = tmp_path / "results"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"space": {"name": "live", "num_samples": 1}}))
    release, drawn = threading.Event(), []

    def slow_report(results_dir, progress=None):
        assert release.wait(timeout=30)  # the page is drawn until the test lets it finish
        drawn.append(progress.finished)

    monkeypatch.setattr(live_module, "write_report", slow_report)
    clock = Clock()
    live = LiveReport(out, total=3, clock=clock)
    live.trial_finished(1)  # returns while the page is still being drawn
    assert drawn == [] and live._drawing.is_alive()
    clock.now = 100
    live.trial_finished(2)  # one page at a time: this one waits for the next update
    release.set()
    live.close()  # waits for the page being drawn
    assert drawn == [1]
    clock.now = 200
    live.update()
    live.wait()
    assert drawn == [1]  # closed: the final report is not replaced
