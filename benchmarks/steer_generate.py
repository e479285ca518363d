"""Cost of a steering hook in generation (ISSUE: Directions): greedy generation with and
without ``steer`` (one layer, and three layers), interleaved round by round in one process.

Run: .venv/bin/python benchmarks/steer_generate.py [--rounds 5] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from persona_probe.directions import random_direction  # noqa: E402
from persona_probe.generation import generate_responses  # noqa: E402
from persona_probe.interventions import residual_norms, steer  # noqa: E402
from persona_probe.hooks import HookPoint  # noqa: E402
from persona_probe.models import load_subject  # noqa: E402
from persona_probe.prompts import load_prompts  # noqa: E402

ROOT = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "results/steer_generate.json"))
    args = ap.parse_args()
    subject = load_subject("smollm2-135m-instruct")
    items = load_prompts("builtin:everyday")[:args.prompts]
    d = random_direction(subject.d_model, list(range(subject.n_layers)), seed=0, name="probe")
    residual_norms(subject, [HookPoint(L, "post") for L in (10, 15, 20)])  # cached, not timed

    def run():
        # min_new_tokens pins the work: every method generates exactly the same token count
        return generate_responses(subject, items, args.new_tokens, batch_size=args.prompts,
                                  progress=False, min_new_tokens=args.new_tokens)

    methods = {
        "plain": run,
        "steer_1_layer": lambda: _with(steer(subject, d, 0.0, [15]), run),
        "steer_3_layers": lambda: _with(steer(subject, d, 0.0, [10, 15, 20]), run),
    }
    run()  # warm-up
    times: dict[str, list[float]] = {m: [] for m in methods}
    names = list(methods)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - t0)
            print(f"round {r} {name}: {times[name][-1]:.2f} s", flush=True)
    med = {m: statistics.median(t) for m, t in times.items()}
    # paired per round: methods in one round ran back to back, so drift on the VM cancels
    ratios = {m: [t / p for t, p in zip(times[m], times["plain"])] for m in methods}
    paired = {m: statistics.median(r) for m, r in ratios.items()}
    from persona_probe.stats import bootstrap
    ci = {m: bootstrap([x - 1 for x in r], stat=lambda a: np.median(a, axis=1))
          for m, r in ratios.items()}
    report = {"command": "python benchmarks/steer_generate.py " + " ".join(sys.argv[1:]),
              "device": f"cpu ({os.cpu_count()} cores)", "torch_threads": torch.get_num_threads(),
              "prompts": args.prompts, "new_tokens": args.new_tokens,
              "results": [{"method": m, "median_s": med[m], "overhead": paired[m] - 1,
                           "overhead_ci": [ci[m].lo, ci[m].hi],
                           "rounds_s": times[m]} for m in methods]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for r in report["results"]:
        print(f"{r['method']:15s} {r['median_s']:.2f} s  overhead {r['overhead']:+.1%} "
              "(median of per-round paired ratios)")


def _with(ctx, fn):
    with ctx:
        return fn()


if __name__ == "__main__":
    main()
