"""The side-by-side report: `report.json` (a fixed schema), a printed table, and a plot."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.macs import MacReport
from ..files import atomic_write
from .evaluate import Comparison


def build_report(teacher_name: str, video: str, cmp: Comparison, macs: MacReport, accuracy: dict[str, Any],
                 metric: str, consistency: dict[str, float], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report.json schema; the first keys are fixed, more may follow."""
    report = {
        "teacher": teacher_name,
        "video": video,
        "frames": cmp.frames,
        "keyframe_interval": cmp.keyframe_interval,
        "gmacs_per_frame": {"teacher": macs.teacher / 1e9, "delta": macs.amortised / 1e9},
        "mac_ratio": macs.ratio,
        "ms_per_frame": {"teacher": cmp.teacher_ms, "delta": cmp.delta_ms},
        "speedup": cmp.teacher_ms / cmp.delta_ms,
        "accuracy": {"metric": metric, **accuracy},
        "temporal_consistency": consistency,
        "detail": {
            "gmacs_keyframe": macs.keyframe / 1e9, "gmacs_delta_frame": macs.delta / 1e9,
            "ms_keyframe": cmp.key_ms, "ms_delta_frame": cmp.delta_frame_ms,
            "speedup_over_mac_ratio": (cmp.teacher_ms / cmp.delta_ms) / macs.ratio,
            "delta_frames_repeating_keyframe": cmp.repeat_share,
            "output_change_recovered": cmp.recovered,
            "timing": "median ms after warm-up, interleaved in one process, channels_last; delta amortised "
                      + ("as the mean of every frame after warm-up (the stream chooses per frame what to run)"
                         if cmp.by_mean else "as (key + (K-1) * delta frame) / K"),
        },
    }
    report.update(extra or {})
    return report


#: What a model whose delta frames all repeat their keyframe's output is, in words.
REPEAT_NOTE = ("this model only repeats keyframes (a zero student cuts every path to the output), so its "
               "accuracy is the repeat baseline's and its speed is that of skipping the frame.")


def speed_words(speedup: float) -> str:
    """'1.40x faster', or '1.30x slower' for a speedup below one (never '0.77x faster')."""
    return f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"


def rival_words(accuracy: float, rival: dict[str, Any]) -> str:
    """Whether a model beats repeating keyframes at its own MAC cost, with the margin it needed."""
    verdict = "BEATS it" if rival["beats"] else "does not beat it"
    return f"delta model {verdict}: {accuracy - rival['value']:+.3f}, needs {rival['margin_needed']:+.3f}"


def table(report: dict[str, Any]) -> str:
    g, ms, tc = report["gmacs_per_frame"], report["ms_per_frame"], report["temporal_consistency"]
    acc = report["accuracy"]
    rows = [
        ("", "teacher", "delta model", "ratio"),
        (f"GMAC/frame (K={report['keyframe_interval']})", f"{g['teacher']:.3f}", f"{g['delta']:.3f}",
         f"{report['mac_ratio']:.2f}x fewer"),
        (f"CPU ms/frame ({report.get('backend', 'torch')})", f"{ms['teacher']:.1f}",
         f"{ms['delta']:.1f}", speed_words(report["speedup"])),
        (acc["metric"], "1.000", f"{acc['value']:.3f}",
         f"(repeating keyframes, same K: {acc['hold_keyframe_baseline']:.3f})" if "hold_keyframe_baseline" in acc else ""),
        ("temporal consistency", f"{tc['teacher']:.3f}", f"{tc['delta']:.3f}", ""),
    ]
    traffic = report.get("bytes_per_frame")
    if traffic:
        bound = traffic["speedup_bound"]
        rows.insert(3, ("MB moved/frame (every op, unfused)", f"{traffic['teacher_mb']:.0f}",
                        f"{traffic['amortised_mb']:.0f}", f"if bound by traffic: {speed_words(bound)}"))
    rival = acc.get("rival_equal_macs")
    if rival:
        rows.insert(next(i for i, r in enumerate(rows) if r[0] == acc["metric"]) + 1, (f"rival at equal MACs (K={rival['interval']:.2f})", "", f"{rival['value']:.3f}",
                        rival_words(acc["value"], rival)))
    fastest = report.get("fastest_dense")
    if fastest:
        h, w = fastest["input_size"]
        rows.insert(3, (f"fastest dense teacher ms ({fastest['backend']}, {h}x{w})", f"{fastest['ms']:.1f}",
                        f"{ms['delta']:.1f}", speed_words(report["speedup_vs_fastest_dense"])))
    timed = acc.get("rival_equal_time")
    if timed:
        at = next(i for i, r in enumerate(rows) if r[0] == acc["metric"]) + 1
        rows.insert(at + 1 if rival else at, (f"rival at equal time (K={timed['interval']:.2f})", "", f"{timed['value']:.3f}",
                                              rival_words(acc["value"], timed)))
    low = acc.get("rival_lower_res")
    if low and low.get("value") is not None:
        at = next(i for i, r in enumerate(rows) if r[0] == acc["metric"]) + 1 + bool(rival) + bool(timed)
        h, w = low["input_size"]
        rows.insert(at, (f"rival at lower res ({h}x{w}, every frame)", "", f"{low['value']:.3f}",
                         rival_words(acc["value"], low)))
    held = report.get("rate")
    if held:
        rows.insert(2, (f"cost target (over every {held['window']} frames)", "", f"{held['target']:g}x",
                        f"held {held['achieved']:.2f}x, windows {held['window_min']:.2f}-{held['window_max']:.2f}x"))
    tail = report.get("latency_ms")
    if tail:
        rows.insert(3, ("p95 / worst ms of a frame", f"{tail['teacher']['p95']:.1f} / {tail['teacher']['max']:.1f}",
                        f"{tail['delta']['p95']:.1f} / {tail['delta']['max']:.1f}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    out = "\n".join(lines) + f"\n({report['frames']} frames of {Path(report['video']).name})"
    bars = report.get("letterbox_share", 0.0)
    if bars >= 0.05:
        out += (f"\nnote: letterbox bars fill {bars:.0%} of each input frame. The teacher and the rival compute "
                "them; a sparse delta model skips them, so part of its saving is theirs (BENCHMARKS.md note 29).")
    if rival and rival.get("words"):
        out += f"\nnote: {rival['words']}."
    if timed and timed.get("speed_ratio", timed["interval"]) < 1:
        out += f"\nnote: {timed['words']}."
    if report.get("detail", {}).get("delta_frames_repeating_keyframe", 0.0) == 1.0:
        out += "\nnote: every delta frame returned its keyframe's output, bit for bit: " + REPEAT_NOTE
    return out


def write_json(path: Path, report: dict[str, Any]) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(report, indent=2)))


def plot(path: Path, cmp: Comparison, macs: MacReport, title: str) -> None:
    """Per-frame MACs and wall-clock time of teacher and delta model, keyframes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = cmp.frames
    x = np.arange(n)
    key = np.array(cmp.is_key)
    delta_g = np.where(key, macs.keyframe, macs.delta) / 1e9
    if cmp.delta_frame_macs:  # data-dependent students: each delta frame's measured MACs
        delta_g[~key] = np.array(cmp.delta_frame_macs, dtype=float) / 1e9
        macs = replace(macs, delta=round(float(np.mean(cmp.delta_frame_macs))))
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    a.step(x, np.full(n, macs.teacher / 1e9), where="mid", label="teacher", color="0.3")
    a.step(x, delta_g, where="mid", label="delta model", color="tab:blue")
    a.axhline(macs.amortised / 1e9, ls="--", color="tab:blue", lw=1, label=f"delta, amortised ({macs.ratio:.2f}x fewer)")
    a.set_ylabel("GMAC / frame")
    a.legend(loc="upper right", fontsize=8)
    b.plot(x, cmp.ms_teacher, label=f"teacher (median {cmp.teacher_ms:.0f} ms)", color="0.3")
    b.plot(x, cmp.ms_delta, label=f"delta model (amortised {cmp.delta_ms:.0f} ms)", color="tab:blue")
    b.scatter(x[key], np.array(cmp.ms_delta)[key], color="tab:orange", s=12, zorder=3, label="keyframes")
    b.set_ylabel("CPU ms / frame")
    b.set_xlabel("frame")
    b.legend(loc="upper right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
