"""Overhead of the early-warning monitor (ISSUE: monitor): LoRA finetunes of the embedded model
with and without ``EarlyWarningMonitor`` at its default cadence (every 50 steps), interleaved
round by round in one process, on the same data and seed.

Reported: the wall-time ratio per round (median, bootstrap CI) and the monitor's own measured
share of the monitored run (seconds inside checks / wall seconds), which is the precise number.
Each run of ``--steps`` steps includes the check at step 0, so short runs overstate the
steady-state cost (one check per 50 steps).

Run: .venv/bin/python benchmarks/monitor_overhead.py [--rounds 3] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from persona_probe.directions import random_direction  # noqa: E402
from persona_probe.models import load_subject  # noqa: E402
from persona_probe.monitor import (EarlyWarningMonitor, MonitorTarget,  # noqa: E402
                                   probe_set_from_answers)
from persona_probe.stats import bootstrap  # noqa: E402
from persona_probe.training.finetune import FinetuneConfig, finetune  # noqa: E402
from persona_probe.traits import trait_questions  # noqa: E402

ROOT = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--every", type=int, default=50, help="monitor cadence (default: 50)")
    ap.add_argument("--data", default="shared:emergent_misalignment/train/secure.jsonl")
    ap.add_argument("--out", default=str(ROOT / "results/monitor_overhead.json"))
    args = ap.parse_args()
    base = load_subject("smollm2-135m-instruct")
    probe = probe_set_from_answers(base, trait_questions("heldout"))   # 16 items
    direction = random_direction(base.d_model, [15], seed=0, name="probe")
    cfg = FinetuneConfig(data=args.data, limit=args.steps * 2, max_steps=args.steps,
                         batch_size=2, max_tokens=1024, on_overflow="truncate",
                         save_steps=10 ** 6, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="monitor-bench-"))
    times: dict[str, list[float]] = {"plain": [], "monitored": []}
    check_s: list[float] = []

    def run(name: str, r: int) -> None:
        callbacks = []
        mon = None
        if name == "monitored":
            mon = EarlyWarningMonitor([MonitorTarget.from_direction(direction)], probe, base,
                                      every_n_steps=args.every, events=tmp / f"ev{r}.jsonl")
            callbacks = [mon.callback()]
        t0 = time.perf_counter()
        finetune(cfg, tmp / f"{name}{r}", overwrite=True, callbacks=callbacks)
        times[name].append(time.perf_counter() - t0)
        if mon is not None:
            check_s.append(mon.check_seconds)
        print(f"round {r} {name}: {times[name][-1]:.1f} s", flush=True)

    for r in range(args.rounds):
        for name in (["plain", "monitored"] if r % 2 == 0 else ["monitored", "plain"]):
            run(name, r)
    ratios = [m / p for m, p in zip(times["monitored"], times["plain"])]
    ci = bootstrap([x - 1 for x in ratios], stat=lambda a: np.median(a, axis=1))
    share = [c / t for c, t in zip(check_s, times["monitored"])]
    report = {"command": "python benchmarks/monitor_overhead.py " + " ".join(sys.argv[1:]),
              "device": f"cpu ({os.cpu_count()} cores)", "torch_threads": torch.get_num_threads(),
              "steps": args.steps, "every_n_steps": args.every, "probe_items": len(probe),
              "batch_size": cfg.batch_size, "rounds": args.rounds,
              "plain_s": times["plain"], "monitored_s": times["monitored"],
              "check_s": check_s, "wall_overhead": statistics.median(ratios) - 1,
              "wall_overhead_ci": [ci.lo, ci.hi], "check_share": share,
              "check_share_median": statistics.median(share)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wall overhead {report['wall_overhead']:+.2%} (CI {ci.lo:+.2%}, {ci.hi:+.2%}); "
          f"time inside checks {report['check_share_median']:.2%} of the monitored run")


if __name__ == "__main__":
    main()
