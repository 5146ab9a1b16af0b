"""study/watch/live.py: the report of a running study, rewritten at most every 30 s, scripted with a clock."""

import json

from study.analysis.page import REPORT_FILE, write_report
from study.analysis.results import trials_table, write_tables
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
    page = (out / REPORT_FILE).read_text()
    assert "No trial has finished yet" in page and '<meta http-equiv="refresh" content="30">' in page

    def finish(count: int, now: float) -> str:
        clock.now = now
        write_tables(out, *trials_table(records[:count]))
        live.trial_finished(count)
        return (out / REPORT_FILE).read_text()

    clock.now = 29
    live.update()
    assert (out / REPORT_FILE).read_text() == page  # nothing new
    page = finish(1, 30)
    assert "Partial report: the study is still running" in page and "1 trial(s) finished, 4 still to come" in page
    assert '<meta http-equiv="refresh" content="30">' in page and "t0" in page
    assert "did not record a finish" not in page  # the banner says it better
    assert finish(2, 45) == page  # 15 s after the last write: not yet
    clock.now = 59
    live.update()
    assert (out / REPORT_FILE).read_text() == page
    clock.now = 60
    live.update()  # 30 s on: the trial that finished at 45 s appears
    page = (out / REPORT_FILE).read_text()
    assert "2 trial(s) finished, 3 still to come" in page and "t1" in page
    final = write_report(out).read_text()  # what study/cli/run/finish.py writes at the end
    assert "http-equiv" not in final and "Partial report" not in final
