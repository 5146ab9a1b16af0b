"""The Ray processes a SIGKILLed driver leaves behind are found by the session they write to, and only those stop."""

import subprocess
import sys

from study.tune.cluster import leftover_processes, stop_leftover_processes

# says which signal stopped it: psutil reaps the process, so Popen never sees its exit status
HOLD_OPEN = (
    "import signal, sys, time; log = open(sys.argv[1], 'a');"
    "signal.signal(signal.SIGTERM, lambda *_: (print('SIGTERM', flush=True), sys.exit(0)));"
    "print('open', flush=True); time.sleep(600)"
)


def holding_open(path) -> subprocess.Popen:
    """A process that keeps `path` open, as Ray's agents keep their session's log files open."""
    path.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "open\n"
    return process


def test_only_the_sessions_own_processes_are_stopped(tmp_path):
    ours = tmp_path / "session_1"
    left = holding_open(ours / "logs" / "dashboard_agent.log")
    # another study's session whose name starts with ours: untouched
    other = holding_open(tmp_path / "session_10" / "logs" / "dashboard_agent.log")
    try:
        assert [p.pid for p in leftover_processes(str(ours))] == [left.pid]
        assert stop_leftover_processes(str(ours)) == 1
        assert left.stdout.read() == "SIGTERM\n"  # asked to stop first, not killed
        assert other.poll() is None and leftover_processes(str(ours)) == []
    finally:
        for process in (left, other):
            process.kill()
            process.wait()
