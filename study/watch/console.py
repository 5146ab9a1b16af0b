"""What a running study prints: one line per finished trial and a status line.

On a terminal the status line (trials completed / stopped / errors / running /
pending, elapsed time, an estimate of the time left, the best validation
accuracy with its searched settings, the size of the front) stays at the bottom
and is updated in place by rich's Live display; finished trials print above
it. Off a terminal (a file, a pipe, CI, `nohup`, a notebook) the same
information comes as plain lines without control characters: one per finished
trial and a status line at most every STATUS_PERIOD_S seconds (only when a
trial finished since the last one, or after QUIET_PERIODS periods without
news), and once at the end: a long study's log grows with its trials, not with
its duration.

Plain Python: study/tune/callbacks.py drives it from a Ray Tune callback
(`WatchCallback`); tests drive it with scripted rows.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import TextIO

import pandas as pd

from study.analysis.pareto import pareto_front
from study.core.metrics import ACCURACY, MAIN_COST

STATUS_PERIOD_S = 30.0
QUIET_PERIODS = 10  # without a finished trial, a plain status line every 10 x 30 s: the study is alive
STATUS_STYLES = {"completed": "green", "stopped_early": "yellow", "error": "bold red"}


def duration(seconds: float) -> str:
    """12.3 s, 4m05s, 2h03m."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def setting_text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def settings_text(row: dict, searched: list[str]) -> str:
    return " ".join(f"{name}={setting_text(row.get(name))}" for name in searched) or "(no searched setting)"


def describe_stop(row: dict) -> str:
    """Why a trial stopped early, in a few words: its recorded stop reason (the scheduler's words), else after which
    epoch."""
    reason = row.get("stop_reason")
    if isinstance(reason, str) and reason:
        return reason
    return f"the scheduler stopped it after epoch {row.get('epochs_run')}/{row.get('epochs')}"


def trial_line(row: dict, searched: list[str], number: int, total: int | None) -> str:
    """One finished trial: its settings, status, validation accuracy, training time, and why it stopped early or
    its error."""
    count = f"{number}/{total}" if total else str(number)
    line = f"[{count}] {row.get('trial_id')} {settings_text(row, searched)}: {str(row.get('status')).replace('_', ' ')}"
    if _finite(row.get(ACCURACY)):
        line += f", val_acc {_accuracy_text(row.get(ACCURACY))}, train {duration(_float(row.get(MAIN_COST)))}"
    if row.get("status") == "stopped_early":
        line += f" ({describe_stop(row)})"
    elif row.get("status") == "error":
        line += f": {row.get('error') or 'no message'}"
    return line


class StudyConsole:
    """The compact console of one study (module docstring). `live`: None decides from the stream (a terminal)."""

    def __init__(
        self,
        total: int | None,
        searched: list[str],
        stream: TextIO | None = None,
        live: bool | None = None,
        period_s: float = STATUS_PERIOD_S,
        clock=time.monotonic,
    ):
        self.total = total
        self.searched = searched
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.period_s = period_s
        self.clock = clock
        self.started = clock()
        self.last_status = self.started
        self.last_status_finished = 0
        self.rows: list[dict] = []
        self.running = 0
        self.front: list[dict] = []  # the rows on the accuracy-time front (study/analysis/pareto.py)
        self._display = None
        self._handlers: list[tuple[logging.StreamHandler, TextIO]] = []

    # --- events ---------------------------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.live:
            return
        from rich.console import Console
        from rich.live import Live

        self._display = Live(
            get_renderable=self._status_renderable,
            console=Console(file=self.stream),
            refresh_per_second=1,
            transient=False,
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self._display.start()
        self._follow_redirect()

    def resume(self, rows: list[dict]) -> None:
        """A resumed study's finished trials: counted, on the front where they belong, without a line each again."""
        self.rows = list(rows)
        self.front = pareto_front(pd.DataFrame(rows)).to_dict("records") if rows else []

    def trial_finished(self, row: dict) -> None:
        """`row`: the trial's results row (study/analysis/results.py trials_table)."""
        self.rows.append(row)
        # the front of every trial so far is the front of the last front plus this trial (dominance is transitive):
        # a cost per trial that does not grow with the study
        self.front = pareto_front(pd.DataFrame([*self.front, row])).to_dict("records")
        line = trial_line(row, self.searched, len(self.rows), self.total)
        if self._display is not None:
            from rich.text import Text

            text = Text(line)
            style = STATUS_STYLES.get(row.get("status"))
            start = line.find(": ") + 2
            if style:
                text.stylize(style, start, start + len(str(row.get("status"))))
            self._display.console.print(text, soft_wrap=True)
        else:
            self._print(line)

    def update(self, running: int) -> None:
        """Called often (every step of Tune's loop): the live line refreshes itself; plain lines when due."""
        self.running = running
        if self._display is not None:
            return
        quiet = self.clock() - self.last_status
        news = len(self.rows) > self.last_status_finished
        if quiet >= self.period_s * (1 if news else QUIET_PERIODS):
            self.last_status, self.last_status_finished = self.clock(), len(self.rows)
            self._print(self.status_line())

    def close(self) -> None:
        """The final status line, left on screen (a terminal) or printed (plain)."""
        self.running = 0
        if self._display is not None:
            self._display.refresh()
            self._display.stop()
            self._display = None
            self._unfollow_redirect()
        else:
            self._print(self.status_line())

    # --- text -----------------------------------------------------------------------------------------------------

    def status_line(self) -> str:
        statuses = [row.get("status") for row in self.rows]
        finished = len(self.rows)
        pending = max(0, self.total - finished - self.running) if self.total else 0
        elapsed = self.clock() - self.started
        parts = [
            f"{finished}/{self.total or '?'} trials: {statuses.count('completed')} completed, "
            f"{statuses.count('stopped_early')} stopped, {statuses.count('error')} errors, {self.running} running, "
            f"{pending} pending",
            f"elapsed {duration(elapsed)}",
        ]
        if self.total and finished:
            left = elapsed / finished * (self.total - finished)
            parts.append(f"~{duration(left)} left" if finished < self.total else "done")
        scored = [row for row in self.rows if row.get("status") != "error" and _finite(row.get(ACCURACY))]
        if scored:
            best = max(scored, key=lambda row: row[ACCURACY])
            parts.append(f"best val_acc {_accuracy_text(best[ACCURACY])} ({settings_text(best, self.searched)})")
            parts.append(f"{len(self.front)} on the front")
        return " | ".join(parts)

    def _status_renderable(self):
        from rich.text import Text

        return Text(self.status_line(), style="bold", overflow="ellipsis", no_wrap=True)

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def _follow_redirect(self) -> None:
        """Log handlers made before the live display (Ray's) write to the real stderr/stdout, under the live line:
        point them at rich's redirected streams so their lines print above it."""
        originals = {id(sys.__stderr__): sys.stderr, id(sys.__stdout__): sys.stdout}
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            for handler in getattr(logger, "handlers", []):
                if isinstance(handler, logging.StreamHandler) and id(handler.stream) in originals:
                    self._handlers.append((handler, handler.stream))
                    handler.setStream(originals[id(handler.stream)])

    def _unfollow_redirect(self) -> None:
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers.clear()


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _finite(value) -> bool:
    return math.isfinite(_float(value))


def _accuracy_text(value) -> str:
    """An accuracy on the console: 4 decimals, fixed width for lines that read as a column (the report's tables
    use 4 significant digits instead: study/analysis/page.py)."""
    return f"{_float(value):.4f}" if _finite(value) else "n/a"
