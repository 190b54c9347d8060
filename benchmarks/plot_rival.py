"""One picture of issue 9: delta models against the rival, accuracy over MAC ratio.

Reads the ``--json`` files of `bench_rival.py` (one series each, ``label=path``) and draws each
model as a point, the rival (the teacher every K frames, its output repeated, interpolated in 1/K
as the reports do) as a line, and the bar a model must clear to beat it (rival + min(0.02, half
its gap to the teacher)). A point above the dashed line at 2x or more is what issue 9 asks for.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def rival_points(rows: list[dict]) -> dict[float, float]:
    """The rival's score at each whole interval the rows name (scores_at, and the same-K figure)."""
    pts: dict[float, float] = {1.0: 1.0}  # K=1 is the teacher on every frame: its own score, exactly
    for r in rows:
        pts.update({float(k): v for k, v in r["rival_equal_macs"]["scores_at"].items()})
        pts[float(r["k"])] = r["rival_same_k"]
    return pts


def rival_curve(pts: dict[float, float], xs: np.ndarray) -> np.ndarray:
    """Linear in amortised MACs (1/K) between the known whole intervals, as `rival_equal_macs` does."""
    ks = np.array(sorted(pts))
    return np.interp(1 / xs, 1 / ks[::-1], np.array([pts[k] for k in ks[::-1]]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("series", nargs="+", help="label=path[,path...] of bench_rival.py --json files")
    ap.add_argument("--k", type=int, default=4, help="plot the rows at this keyframe interval")
    ap.add_argument("--title", default="")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    everything: list[dict] = []
    for spec in args.series:
        label, _, paths = spec.partition("=")
        rows = [r for path in paths.split(",") for r in json.loads(Path(path).read_text()) if r["k"] == args.k]
        if not rows:
            raise SystemExit(f"{paths}: no rows at K={args.k}")
        everything += rows
        rows.sort(key=lambda r: r["mac_ratio"])
        ax.plot([r["mac_ratio"] for r in rows], [r["accuracy"] for r in rows], "o-", label=label, ms=5)
        for r in rows:
            ax.annotate(f"{r['budget']:g}", (r["mac_ratio"], r["accuracy"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 3))
    pts = rival_points(everything)
    xs = np.linspace(1.0, max(2.4, max(r["mac_ratio"] for r in everything) + 0.2), 200)
    rival = rival_curve(pts, xs)
    ax.plot(xs, rival, "k-", lw=1.5, label="rival: teacher every K frames, repeated (at K = MAC ratio)")
    ax.plot(xs, rival + np.minimum(0.02, (1 - rival) / 2), "k--", lw=1, label="bar to beat it")
    ax.axvline(2.0, color="grey", lw=0.8, ls=":")
    metric = everything[0]["metric"]
    ax.set(xlabel="amortised MAC ratio (teacher / delta model)", ylabel=metric,
           title=args.title or f"K={args.k}: delta models against the rival at equal MACs")
    ax.set_xlim(1.0, xs[-1])
    lo = min(min(r["accuracy"] for r in everything), float(rival.min()))
    ax.set_ylim(max(0.0, lo - 0.02), 1.005)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
