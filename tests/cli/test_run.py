"""The run command's pieces on their own (study/cli/run/): the dry run's list of trials (preflight.py), the space
the command line resolves to (parser.py), what --overwrite deletes and keeps (results_dir.py).

Whole studies through the command are in test_orchestration.py, its one-line errors in test_bad_input.py.
"""

import json
import re

from study.cli import run
from study.cli.run import parser, results_dir
from tests.helpers import write_space

# What study.run records first in a study.json (study/cli/run/results_dir.py is_study_record).
STUDY_RECORD = {"command": ["python", "-m", "study.run"], "space": {}, "ray_experiment": "/x/ray/tune"}


def test_dry_run_lists_the_documents_trials_with_their_parameter_counts(capsys):
    assert run.main(["--space", "paper_001_transfer_vs_finetune", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert (
        "search grid, seed 0, 48 trials; up to 50 epochs each, no ASHA" in printed and "Nothing is trained" in printed
    )
    rows = [line.split() for line in printed.splitlines() if re.match(r"\s+\d+ ", line)]
    assert len(rows) == 48
    # document 001's own counts: trainable / total parameters with the 10-class head
    counts = {(row[1].split(".")[0], row[2]): (row[-2], row[-1]) for row in rows}
    assert counts[("resnet50", "0")] == ("20,490", "23,528,522") and counts[("resnet50", "all")] == (
        "23,528,522",
        "23,528,522",
    )
    assert counts[("densenet201", "0")] == ("19,210", "18,112,138")
    assert counts[("vit_base_patch16_224", "0")] == ("7,690", "85,806,346")

    assert run.main(["--space", "paper_000_bn_target", "--dry-run"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if re.match(r"\s+\d+ ", line)]
    by_setting = {(row[1], row[2]): row for row in rows}
    assert len(rows) == 26
    # Target model n = 13: conv 13 (2,359,808) and the 512 x 10 head; BN Target adds one BatchNorm of 512 channels
    assert by_setting[("1", "none")][-2] == "2,364,938" and by_setting[("1", "before_retrained_conv")][-3:] == [
        "1",
        "2,365,962",
        "14,720,842",
    ]

    assert run.main(["--space", "paper_004_unfreeze_k", "--dry-run", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if re.match(r"\s+\d+ ", line)]
    assert "seed 3, 22 trials; up to 6 epochs each" in printed and len(rows) == 22
    assert {row[3] for row in rows} == {f"{k}/52" for k in (0, 1, 2, 3, 5, 6, 7, 8, 10, 20, 34)}
    assert rows[0][5] == "2,562" and " ".join(rows[0][7:]) == "3 head_warmup (2,562) then 3 main (2,562)"


def test_seed_fixes_trial_seeds_only_when_given(tmp_path, capsys):
    space = write_space(tmp_path, "dimensions: {seed: {grid: [1, 2, 3]}}\n")
    kept = parser.resolve_space(parser.parse_args(["--space", str(space)]))
    assert kept.dimensions["seed"].values == [1, 2, 3] and "seed" not in kept.fixed
    fixed = parser.resolve_space(parser.parse_args(["--space", str(space), "--seed", "7"]))
    assert "seed" not in fixed.dimensions and fixed.fixed["seed"] == 7
    assert (
        "--seed 7 fixes every trial's seed, replacing the space's seed dimension [1, 2, 3]" in capsys.readouterr().out
    )


def test_overwrite_deletes_what_a_study_wrote_and_nothing_else(tmp_path, capsys):
    out = tmp_path / "study"
    (out / "ray" / "tune").mkdir(parents=True)
    (out / "study.json").write_text(json.dumps(STUDY_RECORD))
    for name in ("trials.csv", "trials.parquet", "epochs.parquet", "pareto.csv", "pareto.html", "report.html"):
        (out / name).write_text("old")
    (out / ".trials.csv.abc.tmp").write_text("a write cut short")
    (out / "thesis").mkdir()
    (out / "thesis" / "chapter1.tex").write_text("mine")
    (out / "notes.txt").write_text("mine")
    space = parser.resolve_space(parser.parse_args(["--space", "smoke"]))
    assert results_dir.check_out(out, space, overwrite=True) == out
    results_dir.create_out(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "thesis"]
    assert (out / "thesis" / "chapter1.tex").read_text() == "mine"
    assert "--overwrite kept what no study writes" in capsys.readouterr().out
