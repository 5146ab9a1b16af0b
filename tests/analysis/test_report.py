import dataclasses
import io
import json
import math
import os
import shutil
import subprocess

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient
from PIL import Image
from plotly.offline import get_plotlyjs

from study.analysis.importance import dimension_importance
from study.analysis.page import REPORT_FILE, export, render, views, write_report
from study.analysis.pareto import pareto_front
from study.analysis.results import load_results, trials_table
from study.cli.report import main
from study.core.metrics import FRONT_COSTS, MAIN_COST
from study.core.outcomes import encode
from tests.helpers import REPO, history, run_module

NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"


def interrupted_study(out, with_study_json=True):
    """Partial results as an interrupted study leaves them: 9 of 12 planned trials, two errors, one stopped early."""
    trials = [  # (depth, optimizer, accuracies per epoch, seconds per epoch, error)
        (0, "sgd", [0.5, 0.6, 0.65], 1.0, None),
        (0, "adamw", [0.7, 0.8, 0.82], 1.1, None),
        (2, "sgd", [0.55, 0.62, 0.66], 1.5, None),
        (2, "adamw", [0.75, 0.85, 0.88], 1.6, None),
        ("all", "sgd", [0.3], 4.0, None),  # stopped early by ASHA
        ("all", "adamw", [0.8, 0.9, 0.93], 4.2, None),
        (4, "sgd", [0.5, 0.61, 0.64], 2.0, None),
        (4, "adamw", [], 2.1, "RuntimeError: CUDA out of memory"),
        (4, "adamw", [0.9], 2.2, "FloatingPointError: training loss became nan in epoch 2"),
    ]
    records = [
        {
            "trial_id": f"t{i}",
            "config": {"unfreeze_depth": depth, "optimizer": optimizer, "epochs": 3},
            "history": history(accs, seconds, memory=700 + 50 * i, start=1000 + 10 * i),
            "error": error,
            "max_epochs": 3,
        }
        for i, (depth, optimizer, accs, seconds, error) in enumerate(trials)
    ]
    table, epochs, _ = trials_table(records)
    export(out, table, epochs, title="interrupted")
    if with_study_json:
        space = {
            "name": "depth_and_optimizer",
            "source": "test",
            "description": "",
            "fixed": {"lr": 0.01},
            "dimensions": {
                "unfreeze_depth": {"kind": "grid", "values": [0, 2, 4, "all"]},
                "optimizer": {"kind": "choice", "values": ["sgd", "adamw"]},
            },
            "num_samples": 3,
            "max_epochs": 3,
            "asha": {"grace_period": 1, "reduction_factor": 2},
            "metric": "val_acc",
            "mode": "max",
        }
        (out / "study.json").write_text(
            json.dumps(
                {"space": space, "seed": 0, "command": ["python", "-m", "study.run"], "started": "2026-01-01T00:00:00"}
            )
        )  # no finish: interrupted
    return table


def by_title(all_views):
    return {view.title: view for view in all_views}


def test_interrupted_study_report_shows_every_view_and_says_what_is_missing(tmp_path):
    table = interrupted_study(tmp_path)
    results = load_results(tmp_path)
    shown = by_title(views(results))
    front = shown[
        "The front (val_acc vs training time (s, alone on a fresh node, evaluation excluded)), cheapest first"
    ].table
    assert front["trial_id"].tolist() == pareto_front(table)["trial_id"].tolist() == ["t0", "t1", "t3", "t5"]
    assert "test_acc" in front and "efficiency" in front
    for title in (
        "Pareto front: val_acc vs training time (s, alone on a fresh node, evaluation excluded)",
        "Pareto front: val_acc vs trainable parameters",
        "Pareto front: val_acc vs peak memory during training (MiB)",
        "Hypervolume of the accuracy-time front as trials finished",
        "Parallel coordinates: searched dimensions against validation accuracy",
        "Learning curves per trial",
        "Validation accuracy per unfreeze_depth",
        "Validation accuracy per optimizer",
        "Dimension importance for validation accuracy",
    ):
        assert shown[title].figure is not None, (title, shown[title].note)
    everything = shown["Every trial"].table
    assert everything.set_index("trial_id").at["t7", "error"] == "RuntimeError: CUDA out of memory"
    assert everything.set_index("trial_id").at["t4", "on fronts"] == ""  # stopped early: shown, not on a front
    assert everything.set_index("trial_id").at["t0", "on fronts"] == "time, params, memory"
    settings = shown["Study settings"].table.set_index("setting")["value"]
    assert settings["finished"] == "not recorded (the study did not finish)"

    page = render(results)
    assert "9 trials (6 completed, 2 error, 1 stopped early). The space plans 12." in page
    assert "partial results of an interrupted or running study" in page
    assert '<script src="http' not in page and "Plotly.newPlot" in page  # plotly.js inline: opens offline


def test_include_stopped_lets_stopped_trials_onto_the_fronts(tmp_path):
    records = [  # the trial stopped after its first epoch is the cheapest: on the front only when stopped ones count
        {
            "trial_id": name,
            "config": {"unfreeze_depth": depth},
            "history": history(accs, seconds),
            "max_epochs": 3,
            "error": None,
        }
        for name, depth, accs, seconds in (("slow", 8, [0.5, 0.6, 0.7], 2.0), ("fast", 0, [0.55], 0.5))
    ]
    table, epochs, _ = trials_table(records)
    export(tmp_path, table, epochs, title="stopped")
    results = load_results(tmp_path)
    on_fronts = {
        include: by_title(views(results, include_stopped=include))["Every trial"].table.set_index("trial_id")[
            "on fronts"
        ]
        for include in (False, True)
    }
    assert results.trials.set_index("trial_id").at["fast", "status"] == "stopped_early"
    assert on_fronts[False]["fast"] == "" and on_fronts[False]["slow"] != ""
    assert on_fronts[True]["fast"] != "" and on_fronts[True]["slow"] != ""
    assert main([str(tmp_path), "--include-stopped", "--out", str(tmp_path / "with-stopped.html")]) == 0
    assert "trials stopped\nearly by ASHA take part in them" in (tmp_path / "with-stopped.html").read_text()


def test_single_trial_only_errors_and_missing_files_still_give_a_report(tmp_path):
    single = tmp_path / "single"
    interrupted_study(single, with_study_json=False)
    table = pd.read_parquet(single / "trials.parquet")
    table[table["trial_id"] == "t1"].to_parquet(single / "trials.parquet")
    (single / "epochs.parquet").unlink()
    results = load_results(single)
    shown = by_title(views(results))
    assert (
        shown["Pareto front: val_acc vs training time (s, alone on a fresh node, evaluation excluded)"].figure
        is not None
    )
    assert shown["Learning curves per trial"].note == "No per-epoch results for these trials."
    assert shown["Parallel coordinates: searched dimensions against validation accuracy"].note.startswith(
        "No searched dimension"
    )
    assert "this study searched none" in shown["Dimension importance for validation accuracy"].note
    assert shown["Hypervolume of the accuracy-time front as trials finished"].figure is not None
    page = render(results)
    assert "study.json is missing" in page and "epochs.parquet is missing" in page

    errors = tmp_path / "errors"
    interrupted_study(errors)
    table = pd.read_parquet(errors / "trials.parquet")
    table[table["status"] == "error"].to_parquet(errors / "trials.parquet")
    shown = by_title(views(load_results(errors)))
    assert (
        "No trial is eligible for the front"
        in shown["Pareto front: val_acc vs training time (s, alone on a fresh node, evaluation excluded)"].note
    )
    assert "needs at least 5 trials" in shown["Dimension importance for validation accuracy"].note
    assert write_report(errors).stat().st_size > 1_000_000


def test_importance_ranks_the_dimension_that_drives_accuracy_and_says_when_it_cannot():
    rng = np.random.default_rng(0)
    n = 16
    trials = pd.DataFrame(
        {
            "trial_id": [f"t{i}" for i in range(n)],
            "status": "completed",
            "optimizer": rng.choice(["sgd", "adamw"], n),
            "lr": 10 ** rng.uniform(-4, -1, n),
            "unfreeze_depth": rng.choice(["0", "4", "all"], n),
        }
    )
    trials["val_acc"] = np.where(trials["optimizer"] == "adamw", 0.9, 0.5) + rng.normal(0, 0.01, n)
    dimensions = {"optimizer": "categorical", "lr": "log", "unfreeze_depth": "categorical"}
    importances, note = dimension_importance(trials, dimensions)
    assert importances.idxmax() == "optimizer" and importances["optimizer"] > 0.9 and "fANOVA" in note

    assert dimension_importance(trials, {"optimizer": "categorical"})[0] is None
    few, note = dimension_importance(trials.head(4), dimensions)
    assert few is None and "at least 5 trials" in note and "have 4" in note
    flat, note = dimension_importance(trials.assign(val_acc=0.5), dimensions)
    assert flat is None and "same validation accuracy" in note
    broken, note = dimension_importance(trials.assign(lr=[math.nan] + [1e-3] * (n - 1)), dimensions)
    assert broken is None and note.startswith("Optuna could not compute importances")


def test_report_cli_on_a_missing_directory_is_one_line_exit_2(tmp_path):
    result = run_module("study.report", str(tmp_path / "nothing"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "does not exist" in result.stderr


@pytest.mark.slow
def test_smoke_study_writes_its_report(smoke_study):
    page = (smoke_study.out / REPORT_FILE).read_text()
    results = load_results(smoke_study.out)
    with_figures = [v for v in views(results) if v.figure is not None]
    assert (
        page.count('class="plotly-graph-div"') == len(with_figures) == 8
    )  # 3 fronts, hypervolume, the early-stopping rungs, parallel, curves, depth
    assert '<script src="http' not in page and get_plotlyjs() in page  # plotly.js embedded: opens offline
    assert page.replace(get_plotlyjs(), "").count("Plotly.newPlot(") == len(with_figures)  # each figure drawn
    assert all(trial_id in page for trial_id in results.trials["trial_id"])
    front = pd.read_csv(smoke_study.out / "pareto.csv")
    shown = by_title(views(results))[
        "The front (val_acc vs training time (s, alone on a fresh node, evaluation excluded)), cheapest first"
    ].table
    assert shown["trial_id"].tolist() == front["trial_id"].tolist()
    assert (results.trials["peak_memory_mib"] > 0).all() and (results.trials["efficiency"] > 0).all()


@pytest.fixture(scope="session")
def interrupted_smoke(smoke_study, tmp_path_factory):
    """The smoke study's real results cut down as an interrupted run leaves them: one trial, no curves, no finish."""
    out = tmp_path_factory.mktemp("interrupted") / "results"
    shutil.copytree(smoke_study.out, out, ignore=shutil.ignore_patterns("ray", REPORT_FILE))
    trials = pd.read_parquet(out / "trials.parquet").head(1)
    trials.to_parquet(out / "trials.parquet")
    trials.to_csv(out / "trials.csv", index=False)
    (out / "epochs.parquet").unlink()
    study = json.loads((out / "study.json").read_text())
    for key in ("finished", "wall_time_s", "trials"):
        study.pop(key)
    (out / "study.json").write_text(json.dumps(study))
    write_report(out)
    return out


@pytest.mark.slow
def test_report_of_interrupted_smoke_results(interrupted_smoke):
    page = (interrupted_smoke / REPORT_FILE).read_text()
    status = pd.read_parquet(interrupted_smoke / "trials.parquet")["status"].iloc[0].replace("_", " ")
    assert f"1 trial (1 {status}). The space plans 3." in page and "epochs.parquet is missing" in page
    assert "not recorded (the study did not finish)" in page


@pytest.mark.slow
def test_notebook_runs_headless_on_the_smoke_study_with_filters_and_another_objective_pair(smoke_study):
    def run(parameters: str):
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
        cell.source = parameters
        NotebookClient(
            notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
        ).execute()
        outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"]
        figures = [
            o.data["application/vnd.plotly.v1+json"]
            for o in outputs
            if "application/vnd.plotly.v1+json" in o.get("data", {})
        ]
        texts = "".join(o.get("text", "") for o in outputs)
        return figures, texts

    figures, texts = run(
        f'RESULTS_DIR = {str(smoke_study.out)!r}\nBACKBONES = ["tf_efficientnet_lite0"]\nAUGMENTATIONS = ["none"]\n'
        'ACCURACY = "val_acc"\nCOST = "trainable_params"\nINCLUDE_STOPPED = True'
    )
    assert "3 trials" in texts
    assert len(figures) == 5  # the chosen front, hypervolume, parallel coordinates, accuracy per depth, learning curves
    assert figures[0]["layout"]["xaxis"]["title"]["text"] == "trainable parameters"
    front_ids = {t for trace in figures[0]["data"] if trace["name"] == "Pareto front" for t in trace["text"]}
    assert front_ids  # the chosen pair's front is drawn

    figures, texts = run(
        f'RESULTS_DIR = {str(smoke_study.out)!r}\nBACKBONES = ["resnet18"]\nAUGMENTATIONS = []\n'
        'ACCURACY = "val_acc"\nCOST = "train_time_s"\nINCLUDE_STOPPED = False'
    )
    assert "No trials." in texts and not figures  # nothing selected: notes, no crash


# Chromium from Debian (packages chromium and chromium-driver), installed here when missing and allowed.
CHROMIUM_PACKAGES = ("chromium", "chromium-driver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--window-size=1400,1000",
    # Parallel coordinates draw with WebGL; without a GPU Chromium renders it in software only when asked to.
    "--enable-unsafe-swiftshader",
)
# Uncaught errors and rejected promises, collected from the first script on: the page's own console may not say.
CATCH_ERRORS = """window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e)));
window.addEventListener("unhandledrejection", e => window.__errors.push(String(e.reason)));"""
FIGURES = """return Array.from(document.querySelectorAll(".plotly-graph-div")).map(div => ({
  id: div.id, ready: !!div._fullLayout, traces: (div._fullData || []).length,
  marks: div.querySelectorAll("path.point, path.js-line, path.box, .bars path, .parcoords .y-axis").length,
  canvases: div.querySelectorAll("canvas").length,
}));"""


def chromium_and_driver() -> tuple[str, str]:
    """Paths of Debian's chromium and chromedriver, installing them as
    root when missing; skip (fail on CI) otherwise."""
    found = lambda: (shutil.which("chromium"), shutil.which("chromedriver"))
    log = ""
    if not all(found()) and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *CHROMIUM_PACKAGES]
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:  # a fresh machine may not have package lists yet
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True)
            done = subprocess.run(install, env=env, capture_output=True, text=True)
        log = (done.stdout + done.stderr)[-1500:]
    chromium, driver = found()
    if chromium and driver:
        return chromium, driver
    message = f"the browser check needs Chromium: apt-get install {' '.join(CHROMIUM_PACKAGES)} (as root) {log}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    chromium, driver = chromium_and_driver()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.execute_cdp_cmd("Network.enable", {})  # offline: the report must need nothing from the network
    session.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    session.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CATCH_ERRORS})
    yield session
    session.quit()


def drawn(png: bytes) -> tuple[float, float]:
    """(share of pixels that are not white, share that are coloured): axes and text are grey, data is coloured."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    darkest, brightest = pixels.min(axis=2), pixels.max(axis=2)
    not_white = (darkest < 240).mean()
    coloured = ((brightest - darkest) > 60).mean()
    return float(not_white), float(coloured)


@pytest.fixture(scope="module")
def interrupted_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("interrupted-report")
    interrupted_study(out)
    write_report(out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("results", ["smoke_study", "interrupted_report", "interrupted_smoke"])
def test_report_renders_in_a_real_browser_offline_without_errors(browser, results, request):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    directory = request.getfixturevalue(results)
    directory = getattr(directory, "out", directory)
    browser.set_window_size(1400, 1000)
    browser.get((directory / REPORT_FILE).as_uri())
    WebDriverWait(browser, 60).until(lambda b: all(f["ready"] for f in b.execute_script(FIGURES)))
    figures = browser.execute_script(FIGURES)
    errors = browser.execute_script("return window.__errors") + [
        e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"
    ]
    assert not errors

    expected = [view.title for view in views(load_results(directory)) if view.figure is not None]
    assert len(figures) == len(expected) > 0
    for figure, title in zip(figures, expected):
        assert figure["traces"] > 0 and figure["marks"] > 0, (title, figure)
        assert figure["canvases"] > 0 or not title.startswith("Parallel"), (title, figure)  # its WebGL layer
    for element, title in zip(browser.find_elements(By.CSS_SELECTOR, ".plotly-graph-div"), expected):
        browser.execute_script("arguments[0].scrollIntoView()", element)
        assert drawn(element.screenshot_as_png)[0] > 0.01, title

    browser.set_window_size(1400, browser.execute_script("return document.documentElement.scrollHeight"))
    browser.execute_script("window.scrollTo(0, 0)")
    screenshot = directory / "report-screenshot.png"
    browser.save_screenshot(str(screenshot))
    print(f"report screenshot: {screenshot}")
    not_white, coloured = drawn(screenshot.read_bytes())
    assert not_white > 0.02 and coloured > 0.001


def test_the_rungs_view_shows_each_rungs_trials_in_the_objective_plane_continued_or_stopped():
    from study.analysis.views.curves import rungs_view

    def decided(accs, seconds, decisions):
        rows = history(accs, seconds)
        for row, decision in zip(rows, decisions):
            row["study_train_time_s"] = row["train_time_s"] / 10  # features reused: the study spent less
            row["rung_decision"] = decision
        return rows

    passed, stopped = "passed rung epoch {}: rank 1 of 1", "stopped at rung epoch {}: rank 2 of 2"
    records = [
        {"trial_id": "a", "history": decided([0.5, 0.6, 0.7], 1.0, [passed.format(1), "", passed.format(3)])},
        {"trial_id": "b", "history": decided([0.4], 2.0, [stopped.format(1)])},
        {"trial_id": "c", "history": decided([0.6, 0.6, 0.5], 1.5, [passed.format(1), "", stopped.format(3)])},
    ]
    trials, epochs, _ = trials_table(
        [
            {**r, "config": {"unfreeze_depth": i, "epochs": 4}, "error": None, "max_epochs": 4}
            for i, r in enumerate(records)
        ]
    )
    view = rungs_view(epochs, trials, {"unfreeze_depth": "grid"})
    points = {(trace.name, trace.xaxis): sorted(zip(trace.x, trace.y)) for trace in view.figure.data if len(trace.x)}
    assert points == {  # at the time alone on a fresh node, the front's own axis, not what the study spent
        ("continued", "x"): [(1.0, 0.5), (1.5, 0.6)],  # rung at epoch 1: a and c continued, b stopped
        ("stopped", "x"): [(2.0, 0.4)],
        ("continued", "x2"): [(3.0, 0.7)],  # rung at epoch 3: a continued, c stopped
        ("stopped", "x2"): [(4.5, 0.5)],
    }
    assert view.figure.layout.xaxis.title.text == "training time so far (s, alone on a fresh node)"
    assert "rung at epoch 3" in [a.text for a in view.figure.layout.annotations]
    assert rungs_view(epochs.assign(rung_decision=""), trials, {}).note.startswith("No trial reached a rung")


VALIDATION_IMAGES = 400


def answered_study(out, repeats=1):
    """A finished depth study with per-image outcomes on 400 validation images: depth 16 the best (380 right), depth
    4 four images behind it (McNemar p = 0.125: not significantly below) at half its time, having reused depth 0's
    cached features; depth 0 far below (280 right) and cheapest. With `repeats`, each depth runs that many seeds."""
    depths = {0: (280, 1.0, "built"), 4: (376, 2.0, "reused"), 16: (380, 4.0, "built")}  # right, s/epoch, cache
    records = []
    for depth, (right, seconds, cache) in depths.items():
        for repeat in range(repeats):
            shift = 4 * repeat  # the later seeds get a few images more wrong
            correct = np.arange(VALIDATION_IMAGES) < right - shift
            rows = history([0.5, (right - shift) / VALIDATION_IMAGES], seconds + 0.1 * repeat)
            for row in rows:
                row.update(
                    val_images=VALIDATION_IMAGES,
                    val_correct=encode(correct),
                    test_images=VALIDATION_IMAGES,
                    test_correct=encode(correct),
                    test_acc=correct.mean(),
                    cache=cache,
                    study_train_time_s=row["train_time_s"] / (10 if cache == "reused" else 1),
                )
            records.append(
                {
                    "trial_id": f"d{depth}r{repeat}",
                    "config": {"unfreeze_depth": depth, "epochs": 2, "repeat": repeat},
                    "history": rows,
                    "error": None,
                    "max_epochs": 2,
                }
            )
    table, epochs, outcomes = trials_table(records)
    export(out, table, epochs, title="depths", outcomes=outcomes)
    return load_results(out)


TIME_FRONT = f"Pareto front: val_acc vs {FRONT_COSTS[MAIN_COST]}"
TIME_TABLE = f"The front (val_acc vs {FRONT_COSTS[MAIN_COST]}), cheapest first"


def test_the_report_opens_with_the_recommendation_and_its_smaller_budgets(tmp_path):
    page = render(answered_study(tmp_path))
    answer = page.index('<p class="answer" id="recommendation">Pick unfreeze_depth=4: val 0.940 [')
    assert "not significantly below the best (unfreeze_depth=16, 0.950; McNemar p=0.12)" in page[answer:]
    assert (
        answer < page.index('<ul class="budgets"><li>Under 4 s of training: unfreeze_depth=0') < page.index("<section>")
    )


def test_the_front_figure_draws_intervals_labels_and_rings_the_members_not_below_the_best(tmp_path):
    results = answered_study(tmp_path)
    shown = by_title(views(results))
    figure = shown[TIME_FRONT].figure
    front = next(trace for trace in figure.data if trace.name == "Pareto front")
    assert list(front.text) == ["unfreeze_depth=0", "unfreeze_depth=4", "unfreeze_depth=16"]
    assert "text" in front.mode and all("<b>d" in hover for hover in front.hovertext)
    trials = results.trials.set_index("trial_id").loc[["d0r0", "d4r0", "d16r0"]]
    assert np.allclose(front.error_y.array, trials["val_acc_high"] - trials["val_acc"])
    assert np.allclose(front.error_y.arrayminus, trials["val_acc"] - trials["val_acc_low"])
    assert all(0.01 < bar < 0.05 for bar in (*front.error_y.array, *front.error_y.arrayminus))
    ringed = [trace for trace in figure.data if trace.name == "not significantly below the best (McNemar, 5%)"]
    assert len(ringed) == 1 and list(ringed[0].x) == [4.0]  # depth 4 (2 s a epoch, 2 epochs); depth 0 is below
    assert "circle-open" in ringed[0].marker.symbol

    table = shown[TIME_TABLE].table.set_index("label")
    assert table.at["unfreeze_depth=4", "verdict"] == "not significantly below the best"
    assert table.at["unfreeze_depth=0", "verdict"] == "significantly below the best"
    assert table.at["unfreeze_depth=16", "val_acc"].startswith("0.950 [0.92")
    assert table.at["unfreeze_depth=4", "difference from the best"].startswith("-0.010 [-0.020, ")  # 4 of 400 images
    assert pd.isna(table.at["unfreeze_depth=16", "p_value"]) and table.at["unfreeze_depth=16", "verdict"] == "best"
    assert table.at["unfreeze_depth=4", "p_value"] == pytest.approx(0.125)
    assert table.at["unfreeze_depth=4", "study_train_time_s"] == pytest.approx(0.4)
    assert table.at["unfreeze_depth=4", "cache"] == "reused"
    time = list(table.columns).index("train_time_s")
    assert list(table.columns[time + 1 : time + 3]) == ["study_train_time_s", "cache"]
    everything = shown["Every trial"].table
    assert {"val_acc", "study_train_time_s", "cache"} <= set(everything) and "repeat" not in everything
    assert everything["val_acc"].str.fullmatch(r"0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]").all()


def test_the_time_axis_sentence_names_the_trials_that_reused_cached_features(tmp_path):
    results = answered_study(tmp_path)
    page = render(results)
    assert (
        "Training time is what each configuration costs alone on a fresh node: 1 trial(s) reused features cached by "
        "an earlier trial or study (unfreeze_depth=4 (d4r0)), which count what building them cost; this study spent "
        "10.4 s training in all (study_train_time_s)." in page
    )  # 2 + 0.4 + 8 s

    old = results.trials.drop(columns=["study_train_time_s", "cache", "val_acc_low", "val_acc_high"])
    old_page = render(dataclasses.replace(results, trials=old))
    assert "what each trial spent in its own study" in old_page and "reused features" not in old_page
    assert 'id="recommendation">No recommendation' in old_page


def test_a_repeated_study_shows_its_configurations_and_draws_the_front_over_them(tmp_path):
    results = answered_study(tmp_path, repeats=3)
    shown = views(results)
    titles = [view.title for view in shown]
    assert titles[titles.index(TIME_TABLE) + 1] == "Configurations over repeats"
    configurations = by_title(shown)["Configurations over repeats"].table.set_index("configuration")
    assert configurations.at["unfreeze_depth=16", "repeats"] == 3
    assert configurations.at["unfreeze_depth=16", "trial_ids"] == "d16r0,d16r1,d16r2"
    assert configurations.at["unfreeze_depth=16", "val_acc"].startswith("0.940 ± 0.010 [0.915, 0.965]")
    assert configurations.at["unfreeze_depth=4", "train_time_s"].startswith("4.2 ± 0.2 [")
    front = next(trace for trace in by_title(shown)[TIME_FRONT].figure.data if trace.name == "Pareto front")
    assert list(front.text) == ["unfreeze_depth=0", "unfreeze_depth=4", "unfreeze_depth=16"]
    assert np.allclose(front.y, [0.69, 0.93, 0.94]) and "3 of 3 repeats completed" in front.hovertext[0]  # the means
    assert np.allclose(front.error_y.array, [0.0248] * 3, atol=1e-4)  # Student t over 3 repeats, sd 0.01
    assert "repeat" in by_title(shown)["Every trial"].table
    page = render(results)
    assert '<p class="answer" id="recommendation">Pick unfreeze_depth=16: val 0.940 ± 0.010' in page
