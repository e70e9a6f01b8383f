"""``flwr-byz`` command line: run experiments, list them, summarise and plot results.

flwr-byz run CONFIG [--engine inprocess|flower] [--results DIR] [--rounds N] [--quick]
                    [--set KEY=VALUE ...] [--threads N] [--no-plot] [--keep-going]
                    [--tensorboard LOGDIR]
flwr-byz list
flwr-byz show CONFIG            # the expanded runs, without running them
flwr-byz summary DIR            # table of the records under DIR
flwr-byz plot DIR               # accuracy / variance-norm-ratio PNGs for DIR
flwr-byz tensorboard DIR --out LOGDIR   # the records under DIR as TensorBoard runs
flwr-byz coordinator --address HOST:PORT
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from flwr_byz.simulations.experiment import CONFIG_DIR, Experiment, load_experiment

QUICK_ROUNDS = 10


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["rule=krum", "seed=[1,2]"]`` -> ``{"rule": "krum", "seed": [1, 2]}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def quick_overrides(experiment: Experiment) -> dict[str, Any]:
    """``--quick``: at most QUICK_ROUNDS rounds and only the first seed."""
    first = experiment.runs[0]
    rounds = min(QUICK_ROUNDS, min(r.num_rounds for r in experiment.runs))
    return {"num-rounds": rounds, "seed": first.seed}


def _experiment(args: argparse.Namespace) -> Experiment:
    overrides = parse_set(args.set or [])
    if args.rounds is not None:
        overrides["num-rounds"] = args.rounds
    experiment = load_experiment(args.config, overrides=overrides, results_dir=args.results)
    if args.quick:
        quick = quick_overrides(experiment)
        automatic = [key for key in quick if key not in overrides]  # not the user's: unnamed
        quick.update(overrides)
        experiment = load_experiment(
            args.config, overrides=quick, results_dir=args.results, unnamed=automatic
        )
    return experiment


def cmd_run(args: argparse.Namespace) -> int:
    from flwr_byz.simulations.runner import run_experiment
    from flwr_byz.simulations.tensorboard_log import TensorBoardUnavailable

    experiment = _experiment(args)
    try:
        outcomes = run_experiment(
            experiment,
            engine=args.engine,
            threads=args.threads,
            progress=not args.no_progress,
            plots=not args.no_plot,
            verbose=args.verbose,
            keep_going=args.keep_going,
            tensorboard=args.tensorboard,
        )
    except TensorBoardUnavailable as err:  # raised before any run starts
        print(f"flwr-byz: error: {err}", file=sys.stderr)
        return 2
    failed = [o for o in outcomes if o.action == "failed"]
    for o in failed:
        print(f"FAILED {o.config.run_name}: {o.error}", file=sys.stderr)
    return 1 if failed else 0


def cmd_show(args: argparse.Namespace) -> int:
    experiment = _experiment(args)
    print(f"{experiment.name}: {len(experiment.runs)} runs, swept: {', '.join(experiment.swept)}")
    for run in experiment.runs:
        print(f"  {run.run_name}  ({run.num_rounds} rounds, n={run.num_clients})")
    return 0


def cmd_flower_config(args: argparse.Namespace) -> int:
    """Print run ``--index`` of the experiment as a ``[tool.flwr.app.config]`` TOML table."""
    experiment = _experiment(args)
    if not 0 <= args.index < len(experiment.runs):
        raise ValueError(f"--index must be in [0, {len(experiment.runs)}), got {args.index}")
    print(f"# {experiment.runs[args.index].run_name}")
    print("[tool.flwr.app.config]")
    for key, value in experiment.runs[args.index].to_flower().items():
        print(f"{key} = {json.dumps(value)}")
    print("run-index = " + str(args.index))
    return 0


def cmd_list(_: argparse.Namespace) -> int:
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        experiment = load_experiment(path)
        print(f"{path.stem:20s} {len(experiment.runs):4d} runs  {experiment.description}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from flwr_byz.schema import RunConfig
    from flwr_byz.simulations.results import load_records
    from flwr_byz.simulations.runner import print_summary, summary_row

    records = load_records(args.dir)
    rows = [
        summary_row(RunConfig.from_flower(rec.config), rec, rec.status) for rec in records.values()
    ]
    print_summary(rows, title=str(args.dir))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from flwr_byz.simulations.plots import plot_directory

    for path in plot_directory(args.dir, args.out):
        print(path)
    return 0


def cmd_tensorboard(args: argparse.Namespace) -> int:
    from flwr_byz.simulations.tensorboard_log import TensorBoardUnavailable, export_records

    try:
        folders = export_records(args.dir, args.out)
    except TensorBoardUnavailable as err:
        print(f"flwr-byz: error: {err}", file=sys.stderr)
        return 2
    if not folders:
        raise ValueError(f"no run record under {args.dir}")
    for folder in folders:
        print(folder)
    print(f"tensorboard --logdir {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from flwr_byz.simulations.report import write_report

    for path in write_report(args.dir, args.out or args.dir, plots=not args.no_plot):
        print(path)
    return 0


def cmd_coordinator(args: argparse.Namespace) -> int:
    from flwr_byz.clients import coordinator

    forwarded = ["--address", args.address]
    if args.idle_timeout is not None:
        forwarded += ["--idle-timeout", str(args.idle_timeout)]
    if args.token:
        forwarded += ["--token", args.token]
    if args.allow_no_token:
        forwarded.append("--allow-no-token")
    coordinator.main(forwarded)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flwr-byz", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def experiment_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="experiment YAML path, or a name in simulations/configs")
        p.add_argument("--results", default=None, help="results directory (default: the YAML's)")
        p.add_argument("--rounds", type=int, default=None, help="override num-rounds")
        p.add_argument(
            "--quick",
            action="store_true",
            help=f"at most {QUICK_ROUNDS} rounds and the first seed only",
        )
        p.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override a field (YAML value; a list sweeps), repeatable",
        )

    run = sub.add_parser("run", help="run an experiment (skips finished runs, resumes others)")
    experiment_args(run)
    run.add_argument("--engine", choices=("inprocess", "flower"), default="inprocess")
    run.add_argument("--threads", type=int, default=1, help="torch threads per process")
    run.add_argument("--no-plot", action="store_true")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--keep-going", action="store_true", help="go on after a failing run")
    run.add_argument("--verbose", action="store_true", help="Flower's INFO logs")
    run.add_argument(
        "--tensorboard",
        metavar="LOGDIR",
        default=None,
        help="also log the round metrics to TensorBoard, one run per folder LOGDIR/<run name>"
        " (needs the tensorboard extra)",
    )
    run.set_defaults(func=cmd_run)

    show = sub.add_parser("show", help="print the runs of an experiment without running them")
    experiment_args(show)
    show.set_defaults(func=cmd_show)

    flower_cfg = sub.add_parser(
        "flower-config", help="one run as the [tool.flwr.app.config] table for `flwr run`"
    )
    experiment_args(flower_cfg)
    flower_cfg.add_argument("--index", type=int, default=0, help="which run of the sweep")
    flower_cfg.set_defaults(func=cmd_flower_config)

    sub.add_parser("list", help="list the bundled experiments").set_defaults(func=cmd_list)

    summary = sub.add_parser("summary", help="summary table of the runs under a directory")
    summary.add_argument("dir")
    summary.set_defaults(func=cmd_summary)

    plot = sub.add_parser("plot", help="plots of the runs under a directory")
    plot.add_argument("dir")
    plot.add_argument("--out", default=None)
    plot.set_defaults(func=cmd_plot)

    board = sub.add_parser(
        "tensorboard", help="write the run records under a directory as TensorBoard runs"
    )
    board.add_argument("dir", help="a results directory (any level: all records below it)")
    board.add_argument("--out", required=True, help="the TensorBoard log directory")
    board.set_defaults(func=cmd_tensorboard)

    report = sub.add_parser(
        "report", help="mean +- std over seeds per case, and plots with a band over seeds"
    )
    report.add_argument("dir", help="the experiment's results folder (RESULTS/EXPERIMENT)")
    report.add_argument("--out", default=None, help="where to write (default: dir)")
    report.add_argument("--no-plot", action="store_true")
    report.set_defaults(func=cmd_report)

    coord = sub.add_parser("coordinator", help="serve the colluding coordinator")
    coord.add_argument("--address", default="127.0.0.1:9099")
    coord.add_argument("--token", default="", help="shared token (default: the env variable)")
    coord.add_argument("--allow-no-token", action="store_true", help="beyond loopback, no token")
    coord.add_argument("--idle-timeout", type=float, default=None, help="seconds")
    coord.set_defaults(func=cmd_coordinator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flwr-byz`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as err:
        print(f"flwr-byz: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
