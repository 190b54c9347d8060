"""`deltadistill bench`: teacher and delta model over the same frames of a video, in one process.

Writes the report.json schema (GMACs amortised, median ms, speedup, accuracy vs the teacher,
temporal consistency), optionally the side-by-side mp4, and with ``sweep`` a Pareto plot of
accuracy against GMACs per frame over keyframe intervals and MAC budgets.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.checkpoint import load, read_meta
from ..core.config import DeltaConfig
from ..core.convert import convert
from ..core.deploy import deploy
from ..core.layer import DeltaConv2d
from ..measure.rival import rival_equal_macs, rival_equal_time
from ..measure.traffic import measure_traffic
from ..runtime.fastest import ENGINES, fastest_dense
from ..runtime.streams import BACKENDS, RUNTIMES, FrameStream, StreamSetup, open_stream, resolve
from ..stream import SceneCut, keyframe_flags
from ..stream.rate import rate_policy
from ..tasks import task_for
from ..train.calibrate import calibrate, sparsify
from ..video import VideoWriter, iter_frames, letterbox_share, side_by_side, video_info
from .evaluate import WARMUP, Comparison, channels_last, compare
from .lower_res import rival_lower_res
from .report import build_report


def load_delta_model(teacher: nn.Module, model_dir: str | Path) -> nn.Module:
    """A fresh copy of ``teacher`` with the checkpoint's students, deployed."""
    read_meta(model_dir)  # clear error before the deep copy
    model = load(copy.deepcopy(teacher), model_dir)
    if any(isinstance(m, DeltaConv2d) for m in model.modules()):
        deploy(model)
    return model.eval()


def check_frames(video: str | Path, start: int, stop: int | None, keyframe_interval: int, compile: bool = False) -> None:
    """Refuse, before any progress bar or output, a span of ``video`` with no frame to time after the
    warm-up (a one-frame video, a --start near the end)."""
    n = video_info(video).frames
    stop = min(stop or n, n)
    warmup = max(WARMUP, 2 * keyframe_interval + 1) if compile else WARMUP  # as `compare` times them
    if start < stop <= start + warmup:
        raise ValueError(f"bench times frames after a warm-up of {warmup}: frames {start}..{stop - 1} of "
                         f"{Path(video).name} are {stop - start}; give a longer video, more --frames or an "
                         "earlier --start")


def evaluate_on_video(teacher: nn.Module, model: nn.Module | None, video: str | Path, *, keyframe_interval: int,
                      start: int = 0, stop: int | None = None, out_video: str | Path | None = None,
                      threads: int | None = None, progress: bool = True, name: str | None = None,
                      compile: bool = False, backend: str = "torch",
                      scene_cut: float | None = None, runtime: str = "dense", crop: dict | None = None,
                      engines: Sequence[str] | None = ENGINES, target: float | str | None = None,
                      rate: dict | None = None) -> tuple[dict, Comparison]:
    """Run both models over ``video[start:stop]``; return (report dict, per-frame comparison).

    ``backend="onnxruntime"`` or ``"openvino"``: export both and time the exported graphs on that engine.
    ``scene_cut``: keyframes also at scene cuts (`SceneCut`), for the delta model and the rival alike.
    ``runtime="crop"``: no delta model (``model`` is ignored); the teacher runs crop by crop
    (`runtime.crop.CropStream`, options in ``crop``) on ``backend`` (torch or openvino), beside the
    plain teacher on the same backend. ``engines``: where to look for the fastest dense teacher
    (`fastest.fastest_dense`), which the report's ``speedup_vs_fastest_dense`` and
    ``rival_equal_time`` are measured against; None skips it. ``target``: hold this cost ratio
    (`rate.RateControl`, options in ``rate``; ``keyframe_interval`` is then the longest interval);
    the rival at equal MACs gets the same budget and the same scene-cut keyframes, and the report's
    ``rate`` gives the held cost beside the target.
    """
    if threads:
        torch.set_num_threads(threads)
    if runtime not in RUNTIMES:
        raise ValueError(f"--runtime must be one of {', '.join(sorted(RUNTIMES))}, not {runtime!r}")
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    name_ = resolve(runtime, backend, model)
    if model is None and not RUNTIMES[name_].teacher_only:
        raise ValueError(f"the {runtime} runtime needs a delta model")
    task = task_for(teacher)
    size = tuple(teacher.input_size)
    info = video_info(video)
    stop = min(stop or info.frames, info.frames)
    if start >= stop:
        raise ValueError(f"--start {start} is past the end: {Path(video).name} has {info.frames} frames")
    check_frames(video, start, stop, keyframe_interval, compile)
    if RUNTIMES[name_].teacher_only:
        model = None
    policy: Any = SceneCut(keyframe_interval, scene_cut) if scene_cut else None
    if target is not None:  # checked before any output or timing
        policy = rate_policy(model if RUNTIMES[name_].steerable else None, target, keyframe_interval, scene_cut,
                             size, backend != "torch" or compile or not RUNTIMES[name_].steerable, rate)
    setup = StreamSetup(teacher, channels_last(model.eval()) if model is not None else None, size,  # type: ignore[arg-type]
                        policy if policy is not None else keyframe_interval, keyframe_interval, backend=backend,
                        threads=threads, compile=compile, options=dict(crop or {}), progress=progress)
    tc_teacher, tc_delta = task.consistency(), task.consistency()
    fastest = fastest_dense(teacher, (info.height, info.width), engines=tuple(engines),  # content size at the
                            align=getattr(teacher, "size_multiple", 32)) if engines else None  # teacher's stride
    stream = open_stream(name_, setup)
    macs = stream.mac_report()
    writer = VideoWriter(out_video, fps=info.fps).__enter__() if out_video else None
    running = {"g": 0.0}

    def on_frame(i: int, frame: np.ndarray, t_pred: Any, d_pred: Any, key: bool) -> None:
        tc_teacher.update(frame, t_pred)
        tc_delta.update(frame, d_pred)
        if writer is None:  # the running MACs only label the rendered video; compare measures them anyway
            return
        now = macs.keyframe if key else (cmp_macs[-1] if stream.measured and cmp_macs else macs.delta)
        running["g"] += now / 1e9
        writer.write(side_by_side(
            task.draw(frame, t_pred), task.draw(frame, d_pred), f"teacher  frame {start + i}",
            f"delta model  {'KEYFRAME' if key else 'delta frame'}",
            f"{macs.teacher / 1e9:.2f} GMAC/frame",
            f"{now / 1e9:.2f} GMAC now, {running['g'] / (i + 1):.2f} avg",
            right_is_key=key))

    cmp_macs: list[int] = []
    try:
        cmp = compare(teacher, model, iter_frames(video, size, "letterbox", start, stop),
                      keyframe_interval=keyframe_interval, preprocess=teacher.preprocess,
                      postprocess=lambda out: task.single(teacher.postprocess(out)),
                      on_frame=on_frame, total=stop - start, progress=progress, compile=compile,
                      stream=_Recording(stream, cmp_macs), policy=policy)
    except BaseException as e:
        if writer is not None:
            writer.__exit__(type(e), e, None)
        raise
    finally:
        stream.close()
    if writer is not None:
        writer.__exit__(None, None, None)
    if cmp.delta_frame_macs:  # data-dependent students: count what the delta frames really cost
        macs = replace(macs, delta=round(float(np.mean(cmp.delta_frame_macs))))
    if policy is not None or cmp.keyframe_interval != keyframe_interval:  # keyframes at cuts or re-keys as
        macs = replace(macs, keyframe_interval=cmp.keyframe_interval)  # well: amortise over them as run
    accuracy = task.accuracy(cmp.delta_preds, cmp.teacher_preds)
    # The trivial rival: repeat the teacher's keyframe prediction on every delta frame, at no cost.
    # A delta model is only worth its MACs where it beats this, at the same K and at the same MACs.
    held, last = [], None
    for pred, key in zip(cmp.teacher_preds, cmp.is_key, strict=True):
        last = pred if key else last
        held.append(last)
    accuracy["hold_keyframe_baseline"] = task.accuracy(held, cmp.teacher_preds)["value"]
    accuracy["rival_equal_macs"] = rival_equal_macs(
        cmp.teacher_preds, lambda preds: task.accuracy(preds, cmp.teacher_preds)["value"], macs.teacher,
        macs.amortised, accuracy["value"],
        keys_at=(lambda k: keyframe_flags(cmp.changes, k, scene_cut)) if policy is not None else None)
    if target is not None:  # where the held cost cannot beat the rival, say so in words, with the gap
        r, at = accuracy["rival_equal_macs"], f"{cmp.policy.target:g}x"
        r["words"] = (f"at {at} the delta model beats the rival by {r['margin']:+.3f}" if r["beats"] else
                      f"at {at} the delta model does not beat the rival: {r['margin']:+.3f} against the "
                      f"+{r['margin_needed']:.3f} needed")
    timing = {"teacher": cmp.tail_ms("teacher"), "delta": cmp.tail_ms("delta")}
    extra_time: dict[str, Any] = {}
    if fastest is not None:
        fastest_ms = _fastest_during_run(fastest, backend, size, cmp.teacher_ms)
        extra_time = {"fastest_dense": {**fastest, "ms_during_run": fastest_ms},
                      "speedup_vs_fastest_dense": fastest_ms / cmp.delta_ms}
        accuracy["rival_equal_time"] = rival_equal_time(
            cmp.teacher_preds, lambda preds: task.accuracy(preds, cmp.teacher_preds)["value"], fastest_ms,
            cmp.delta_ms, accuracy["value"],
            keys_at=(lambda k: keyframe_flags(cmp.changes, k, scene_cut)) if policy is not None else None)
        accuracy["rival_lower_res"] = rival_lower_res(
            teacher, list(iter_frames(video, size, "letterbox", start, stop)), cmp.teacher_preds,
            lambda preds: task.accuracy(preds, cmp.teacher_preds)["value"],
            lambda out: task.single(out), accuracy["value"], cmp.delta_ms, fastest["backend"],
            scale=fastest_ms / fastest["ms"], threads=threads)
    if cmp.stages:  # where a runtime's delta frames spent their time (crop, tiles): medians over delta frames
        st = cmp.stages[cmp.warmup:] or cmp.stages
        stages = {k: float(np.median([d.get(k, 0.0) for d in st])) for k in st[0]}
        stages["mean_computed"] = float(np.mean([d["computed"] for d in st]))
        extra_time[f"{name_}_stages"] = stages
    traffic = None
    if stream.model is not None:
        two = [teacher.preprocess(f[None]) for f in iter_frames(video, size, "letterbox", start, start + 2)]
        traffic = measure_traffic(model, two[0], two[-1], cmp.keyframe_interval) if len(two) == 2 else None
    report = build_report(name or getattr(teacher, "name", type(teacher).__name__), str(video), cmp, macs,
                          accuracy, task.metric,
                          {"teacher": tc_teacher.compute(), "delta": tc_delta.compute()},
                          {"frame_range": [start, stop], "threads": torch.get_num_threads(), "compiled": compile,
                           "backend": backend, "runtime": runtime, "keyframe_interval": keyframe_interval,
                           **({name_: stream.settings()} if stream.settings() is not None else {}),
                           "latency_ms": timing, **extra_time,
                           "keyframe_policy": repr(policy) if policy else f"EveryK({keyframe_interval})",
                           "frames_per_keyframe": cmp.keyframe_interval,
                           "bytes_per_frame": traffic.as_dict() if traffic else None,
                           "letterbox_share": letterbox_share((info.height, info.width), size),
                           "macs_measured": bool(cmp.delta_frame_macs),
                           "rate": cmp.policy.summary() if target is not None else None})
    return report, cmp


def _fastest_during_run(fastest: dict[str, Any], backend: str, size: tuple[int, ...], teacher_ms: float) -> float:
    """The fastest dense teacher's ms, scaled to the run: the candidates were timed before it, so where
    one of them is the teacher the run timed (same engine, full size), the run's own interleaved
    teacher time times their ratio is used; a machine that got slower or faster since moves both."""
    same = [c for c in fastest["candidates"]
            if c["backend"] == backend and tuple(c["input_size"]) == tuple(size) and "ms" in c]
    return teacher_ms * fastest["ms"] / same[0]["ms"] if same else fastest["ms"]


class _Recording:
    """A stream that also keeps each delta frame's MACs, so the rendered video can label them."""

    def __init__(self, stream: FrameStream, into: list[int]) -> None:
        self.stream, self.into = stream, into

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def __call__(self, x: torch.Tensor) -> Any:
        return self.stream(x)

    def account(self) -> float | None:
        spent = self.stream.account()
        if spent is not None and not self.stream.last_key:
            self.into.append(round(spent))
        return spent

    def close(self) -> None:
        pass


def calibrated_model(teacher: nn.Module, data: Any, budget: float, clips: int = 16,
                     progress: bool = True) -> nn.Module:
    """A deployed delta model of ``teacher`` at ``budget``, from `calibrate` alone (no training)."""
    model = convert(copy.deepcopy(teacher), DeltaConfig(student="compressed"))
    calibrate(model, data, budget=budget, clips=clips, progress=progress)
    return deploy(model)


def sparse_model(teacher: nn.Module, data: Any, level: float, clips: int = 8, stem: float = 1.0) -> nn.Module:
    """A deployed delta model of ``teacher`` with sparse students at ``level`` (`sparsify`, no training);
    the stem (the first conv included) at ``stem`` of it."""
    model = convert(copy.deepcopy(teacher), DeltaConfig(student="sparse"))
    sparsify(model, data, level=level, clips=clips, stem=stem)
    return deploy(model)


def sweep(teacher: nn.Module, model: nn.Module | None, video: str | Path, intervals: list[int], out_png: Path,
          start: int = 0, stop: int | None = None, progress: bool = True, budgets: Sequence[float] = (),
          calib_data: Any = None, model_label: str = "model") -> list[dict]:
    """Accuracy vs amortised GMACs per frame: the given model and one calibrated model per budget,
    each at every keyframe interval, beside the free rival of repeating the teacher's keyframe output.

    Writes a Pareto plot to ``out_png`` (the teacher is the star at accuracy 1.0) and returns the points.
    """
    if budgets and calib_data is None:
        raise ValueError("a budget sweep needs calibration clips (frames it does not evaluate on)")
    series: list[tuple[str, nn.Module]] = [(model_label, model)] if model is not None else []
    for b in budgets:
        series.append((f"calibrated, budget {b:g}", calibrated_model(teacher, calib_data, b, progress=progress)))
    points, hold, teacher_gmacs, metric = [], {}, 0.0, ""
    for label, m in series:
        for k in intervals:
            report, _ = evaluate_on_video(teacher, m, video, keyframe_interval=k, start=start, stop=stop,
                                          progress=progress)
            teacher_gmacs, metric = report["gmacs_per_frame"]["teacher"], report["accuracy"]["metric"]
            hold[k] = report["accuracy"]["hold_keyframe_baseline"]
            points.append({"series": label, "keyframe_interval": k, "gmacs": report["gmacs_per_frame"]["delta"],
                           "accuracy": report["accuracy"]["value"], "speedup": report["speedup"],
                           "hold_keyframe_baseline": hold[k],
                           "rival_equal_macs": report["accuracy"]["rival_equal_macs"]})
    _plot_sweep(points, hold, teacher_gmacs, metric, out_png)
    return points


def _plot_sweep(points: list[dict], hold: dict[int, float], teacher_gmacs: float, metric: str, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    for label in dict.fromkeys(p["series"] for p in points):
        pts = sorted((p for p in points if p["series"] == label), key=lambda p: p["gmacs"])
        ax.plot([p["gmacs"] for p in pts], [p["accuracy"] for p in pts], "o-", label=label)
        for p in pts:
            ax.annotate(f"K={p['keyframe_interval']}", (p["gmacs"], p["accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    ks = sorted(hold, reverse=True)
    ax.plot([teacher_gmacs / k for k in ks], [hold[k] for k in ks], "s--", color="gray",
            label="repeat the teacher's keyframe output (teacher every K frames)")
    ax.plot([teacher_gmacs], [1.0], "k*", ms=12, label="teacher")
    ax.set_xlabel("GMAC / frame (amortised)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes, never on a point
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
