"""Rank backbones before training: `python -m study.rank --data DATA --backbones A,B,...`.

The command of study/ranking: every backbone of --backbones with every weights source of --weights is a candidate,
scored on --data by LogME, k-NN and a linear probe (study/ranking/scores.py) from the features the feature cache
keeps at the depth-0 cut (study/ranking/candidates.py). Prints and writes DIR/scores.csv and DIR/scores.json: per
candidate the three scores and its rank by each (1 = best), feature dimension, image counts, the seconds spent
obtaining the features (`feature_s`: building them, or reading them when the cache had them; `feature_cost_s`: what
building them took) and the seconds spent scoring, per score. `--compare RESULTS_DIR` scores the backbones a
finished study searched instead, on that study's data and settings, and compares them with the accuracies it
reached (study/ranking/compare.py). Bad input: one line on stderr, exit code 2. Plain PyTorch, NumPy and
scikit-learn: no Ray.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from study.core.config import FIELD_TYPES, WEIGHT_SOURCES, StudyError, TrialConfig, parse_assignment, weights_source
from study.ranking.candidates import SCORES_FILE, Candidate, Ranking, format_table, rank_candidates, write_scores
from study.ranking.compare import compare
from study.trial.backbones import check_backbone_name
from study.trial.data import absolute_data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.rank", description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset: digits, a torchvision dataset name, or folder:PATH")
    parser.add_argument("--backbones", help="comma-separated timm model names")
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="comma-separated weights sources (imagenet, random, or .pth/.pt/.safetensors files); every backbone "
        "is scored with each (default imagenet)",
    )
    parser.add_argument("--img-size", type=int, help="input size (default: each backbone's pretrained size)")
    parser.add_argument("--data-root", type=Path, help="where datasets and the feature cache live")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="another trial setting (split_seed, ...)"
    )
    parser.add_argument("--out", type=Path, help="where scores.csv/json go (default: results/rank-TIMESTAMP)")
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="RESULTS_DIR",
        help="score the backbones of a finished study and compare with its accuracies",
    )
    return parser


def candidates_from(backbones: str | None, weights: str) -> list[Candidate]:
    names = [name.strip() for name in (backbones or "").split(",") if name.strip()]
    sources = [weights_source(source.strip()) for source in weights.split(",") if source.strip()]
    if len(names) * len(sources) < 2:
        raise StudyError(
            "--backbones needs at least two candidates to rank: give two or more timm names (or --weights "
            f"{','.join(WEIGHT_SOURCES)})"
        )
    for name in names:
        check_backbone_name(name)
    return [
        Candidate(backbone=name, weights=source) for name in dict.fromkeys(names) for source in dict.fromkeys(sources)
    ]


def trial_settings(args: argparse.Namespace) -> dict:
    """The settings every candidate's probe trial shares: --set, then --data, --img-size and --data-root."""
    settings = dict(parse_assignment(text) for text in args.set)
    for key in ("backbone", "weights"):
        if key in settings:
            raise StudyError(f"--set {key}= : give --backbones and --weights instead")
    settings.update(data=args.data)
    if args.img_size is not None:
        settings["img_size"] = args.img_size
    if args.data_root is not None:
        settings["data_root"] = str(args.data_root.expanduser().resolve())
    settings["data"] = absolute_data(settings["data"])
    return settings


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.compare is not None:
            if args.backbones or args.data:
                raise StudyError("--compare takes the backbones and data from the study: leave out --backbones/--data")
            compare(args.compare)
            return 0
        if not args.data:
            raise StudyError("--data is required: digits, a torchvision dataset name, or folder:PATH")
        candidates = candidates_from(args.backbones, args.weights)
        settings = trial_settings(args)
        base = TrialConfig.from_dict({k: v for k, v in settings.items() if k in FIELD_TYPES}, where="study.rank")
        out = args.out or Path("results") / f"rank-{datetime.now():%Y%m%d-%H%M%S}"
        print(f"Scoring {len(candidates)} candidates on {base.data}:", flush=True)
        ranking = rank_candidates(candidates, base)
        write_scores(out, ranking.table, ranking.summary, {**settings, "candidates": [c.label for c in candidates]})
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_ranking(ranking, out)
    return 0


def print_ranking(ranking: Ranking, out: Path) -> None:
    summary = ranking.summary
    print(format_table(ranking.table))
    print(
        f"Features {summary['feature_s']:.1f} s, scoring {summary['scoring_s']:.1f} s, data {summary['data_s']:.1f} s "
        f"({summary['total_s']:.1f} s in all). Scores: {out.resolve()}/{SCORES_FILE}.csv and .json"
    )
