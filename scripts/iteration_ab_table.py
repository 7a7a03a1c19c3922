"""Summarise scripts/iteration_ab.sh's results: median ms per iteration, old -> new, per state and optimizer.

usage: python scripts/iteration_ab_table.py OUT_DIR
"""

import glob
import json
import statistics
import sys
from pathlib import Path


def rows(out: Path) -> dict[tuple[str, str, str], list[dict]]:
    """{(state, side, optimizer): [profile rows]} from random.SIDE.R.json and trained.SIDE.OPT.R.json."""
    found: dict[tuple[str, str, str], list[dict]] = {}
    for path in sorted(glob.glob(str(out / "random.*.json"))):
        side = Path(path).name.split(".")[1]
        for row in json.loads(Path(path).read_text())["rows"]:
            found.setdefault(("random init", side, row["optimizer"]), []).append(row)
    for path in sorted(glob.glob(str(out / "trained.*.json"))):
        side = Path(path).name.split(".")[1]
        row = json.loads(Path(path).read_text())
        found.setdefault(("trained", side, row["optimizer"]), []).append(row)
    return found


def main(out: Path) -> None:
    found = rows(out)
    print("| state | optimizer | old ms/it (rounds) | new ms/it (rounds) | speed-up (medians) "
          "| peak RSS MiB old → new |")
    print("|---|---|---|---|---|---|")
    for state in ("random init", "trained"):
        for opt in ("adam", "tr"):
            old, new = found.get((state, "old", opt)), found.get((state, "new", opt))
            if not old or not new:
                continue
            t_old = [1000 * r["s_per_it"] for r in old]
            t_new = [1000 * r["s_per_it"] for r in new]
            m_old = statistics.median(r["peak_rss_bytes"] for r in old) / 2**20
            m_new = statistics.median(r["peak_rss_bytes"] for r in new) / 2**20
            print(f"| {state} ({old[0]['n_gaussians']} Gaussians) | {opt} "
                  f"| {statistics.median(t_old):.0f} ({', '.join(f'{t:.0f}' for t in t_old)}) "
                  f"| {statistics.median(t_new):.0f} ({', '.join(f'{t:.0f}' for t in t_new)}) "
                  f"| **{statistics.median(t_old) / statistics.median(t_new):.2f}x** | {m_old:.0f} → {m_new:.0f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
