"""Re-render the README's result tables from the committed results files.

    python experiments/render_readme.py          # rewrite the blocks
    python experiments/render_readme.py --check  # exit 1 when a block disagrees with its file
"""

import sys
from pathlib import Path

from persona_probe.experiments.readme_tables import check_readme, render_readme

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    if "--check" in sys.argv:
        status = check_readme(ROOT)
        bad = [k for k, ok in status.items() if ok is False]
        pending = [k for k, ok in status.items() if ok is None]
        print("README tables match their results" if not bad else f"out of date: {bad}")
        if pending:
            print(f"pending (no results file and no block yet): {pending}")
        sys.exit(1 if bad else 0)
    print("rendered:", ", ".join(render_readme(ROOT)) or "nothing")
