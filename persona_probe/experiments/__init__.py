"""The research lines end to end, as importable pipelines (a config dataclass, ``run``,
``draw``); ``experiments/*.py`` are their command-line entry points and ``experiments/configs/``
their CPU- and GPU-sized configs."""

from __future__ import annotations

import argparse
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def script_main(doc: str, config_cls: Any, run: Callable, draw: Callable, root: Path,
                name: str) -> None:
    """The shared command line of an experiment script: ``--config`` (default: its CPU config),
    ``--runs`` (intermediate outputs, resumable), ``--out`` (results and figures),
    ``--figures-only`` (re-draw from ``out/results.json``), ``--dry-run`` (parse and validate
    the config and print the stages it would run; loads no model, writes nothing). Errors from
    persona_probe end the process with one line."""
    from persona_probe.configs import read_json_config
    from persona_probe.errors import PersonaProbeError

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--config", type=Path,
                    default=root / "experiments" / "configs" / f"{name}-smollm2-cpu.json")
    ap.add_argument("--runs", type=Path, default=root / "runs" / name)
    ap.add_argument("--out", type=Path, default=root / "figures" / name)
    ap.add_argument("--figures-only", action="store_true")
    ap.add_argument("--dry-run", action="store_true",
                    help="validate --config and print the planned stages; loads no model")
    staged = "overwrite" in inspect.signature(run).parameters
    if staged:
        ap.add_argument("--overwrite", action="store_true",
                        help="rebuild stages whose outputs were made from other inputs")
    args = ap.parse_args()
    try:
        if args.dry_run:
            from persona_probe.experiments.plan import plan_config

            plan = plan_config(args.config, experiment=name)
            print(plan.text())
            if plan.problems:
                raise SystemExit(1)
            return
        if args.figures_only:
            if not (args.out / "results.json").is_file():
                raise SystemExit(f"error: {args.out / 'results.json'} does not exist; run "
                                 "the experiment first (without --figures-only), or point "
                                 "--out at the directory that holds its results")
            for p in draw(args.out):
                print(p)
            return
        cfg = config_cls.from_dict(read_json_config(args.config, f"{name} config"),
                                   str(args.config))
        try:
            rel = str(args.config.resolve().relative_to(root))
        except ValueError:
            rel = str(args.config)
        run(cfg, args.runs, args.out, rel, **({"overwrite": args.overwrite} if staged else {}))
    except PersonaProbeError as exc:
        raise SystemExit(f"error: {exc}") from None


def stage_clock() -> Callable[[str], None]:
    """A printer of stage lines stamped with the seconds since it was made (progress of a
    long experiment in its log)."""
    t0 = time.perf_counter()

    def stage(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)
    return stage


def command_line(name: str, config_path: str = "") -> str:
    """The command that reproduces an experiment's results (recorded in ``results.json``)."""
    return f"python experiments/{name}.py" + (f" --config {config_path}" if config_path else "")


def report_outputs(out: Path, paths: list[Path]) -> None:
    """The last lines of every experiment: where its results and figures are."""
    print(f"results: {out / 'results.json'}\nfigures: " + "\n         ".join(map(str, paths)))
