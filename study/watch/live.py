"""The report of a running study: report.html rewritten (atomically) as trials finish, at most every
LIVE_PERIOD_S seconds, a partial page that reloads itself.

Driven by the Ray layer's `WatchCallback` (study/tune) beside the console and MLflow; the page itself is
study/analysis/page.py's. Drawing a view must never stop a study: the first failure is a warning, and the
page is written again when the study ends.

The page is drawn in a background thread: drawing it takes 0.5-0.7 s on the 2-core reference machine for a
three-trial study (more for a large one), and Ray's driver loop, which calls the callback, would wait that long
each time (Ray warns of callbacks over 0.5 s; issue 25 asks for none over 0.1 s). One page at a time; `close`
waits for the one being drawn, so a late live page never replaces the final report written after the study.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from study.analysis.page import LIVE_PERIOD_S, REPORT_FILE, Progress, waiting_page, write_report
from study.core.files import atomic_write


class LiveReport:
    """Rewrites a running study's report.html (atomically) as trials finish, at most every `period_s` seconds:
    the first finished trial is shown at once, later ones within `period_s`. The final page, written once the
    study ends (study/cli/run/finish.py), has no `progress` and does not reload."""

    def __init__(self, results_dir: Path, total: int | None, period_s: float = LIVE_PERIOD_S, clock=time.monotonic):
        self.results_dir = results_dir
        self.total = total
        self.period_s = period_s
        self.clock = clock
        self.finished = 0
        self.written_at = -math.inf
        self.due = False
        self.broken = False
        self.closed = False
        self._drawing: threading.Thread | None = None

    def start(self, finished: int = 0) -> None:
        """The page at once: a waiting page until a trial finishes (or the partial report of a resumed study)."""
        self.finished, self.due = finished, True
        self.update()

    def trial_finished(self, finished: int) -> None:
        self.finished, self.due = finished, True
        self.update()

    def update(self) -> None:
        drawing = self._drawing is not None and self._drawing.is_alive()
        if self.due and not (self.broken or self.closed or drawing) and self.clock() - self.written_at >= self.period_s:
            self.written_at, self.due = self.clock(), False
            progress = Progress(finished=self.finished, total=self.total, updated=datetime.now())
            self._drawing = threading.Thread(target=self.write, args=(progress,), name="live-report", daemon=True)
            self._drawing.start()

    def wait(self) -> None:
        """Until the page being drawn (if any) is written."""
        if self._drawing is not None:
            self._drawing.join()

    def close(self) -> None:
        """No page after this one: the study ended and its final report follows."""
        self.closed = True
        self.wait()

    def write(self, progress: Progress) -> None:
        try:
            if progress.finished:
                write_report(self.results_dir, progress=progress)
            else:
                page = waiting_page(self.results_dir, progress)
                atomic_write(self.results_dir / REPORT_FILE, lambda p: Path(p).write_text(page, encoding="utf-8"))
        except Exception as error:  # a view that cannot be drawn yet must not stop the study; the tables are safe
            self.broken = True
            print(
                f"warning: the live report could not be written ({type(error).__name__}: {error}); it is written "
                "again when the study ends",
                file=sys.stderr,
            )
