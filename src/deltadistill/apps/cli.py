"""The `deltadistill` command: distill, bench, demo, export, run. Thin: each command calls the Python API."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Delta Distillation: make a per-frame video CNN cheaper per frame.")


@app.callback()
def _root() -> None:
    """Delta Distillation: make a per-frame video CNN cheaper per frame."""
    _one_line_warnings()


def _one_line_warnings() -> None:
    """Warnings meant for the user (a damaged video) as one line, ``warning: ...``, without the
    library's source path and line that Python's default format adds."""
    import warnings

    from deltadistill.video import VideoWarning

    shown = warnings.showwarning
    if getattr(shown, "one_line", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' own signature
        if issubclass(category, VideoWarning):
            typer.echo(f"warning: {message}", err=True)
        else:
            shown(message, category, filename, lineno, file, line)

    show.one_line = True  # type: ignore[attr-defined]
    warnings.showwarning = show


USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or a missing model: one clear line, no traceback."""
    from deltadistill.runtime import ExportError
    from deltadistill.teachers import TeacherFetchError, UnsupportedOpError

    return (*USER_ERRORS, TeacherFetchError, ExportError, FileExistsError, UnsupportedOpError)


INPUT_SIZE_HELP = ("HxW to run the teacher at (imported graphs with open sizes default to the video's frame "
                   "size, rounded up to the multiple their strides need)")
VALUE_RANGE_HELP = "imported graphs: what the graph expects for black,white, e.g. -1,1 (default 0,1)"
THRESHOLD_SCALE_HELP = "--runtime tiles: a factor on every layer's threshold"
GUARD_HELP = ("--runtime tiles: where tiles cost more than this times the fastest dense teacher, run it instead "
              "until the input quiets (0: tiles always)")
FPS_HELP = ("--runtime tiles: hold this frame rate on measured time, turning every threshold (refused at once "
            "where it cannot be held; 0: off)")
TASK_HELP = ("imported graphs: map (score the output maps against the teacher's) or segmentation "
             "(channel 0 is a foreground probability); default map")


def _teacher(name: str, input_size: Optional[str], value_range: Optional[str], task: Optional[str],
             video: Optional[Path] = None, model_dir: Optional[Path] = None):
    """The teacher, as given on the command line (and as a model directory records it)."""
    from deltadistill.teachers.resolve import parse_range, parse_size, resolve_recorded, resolve_teacher

    size, vr = parse_size(input_size), parse_range(value_range)
    if model_dir is not None:
        from deltadistill.runtime.resolve import model_record

        record = model_record(model_dir)
        if record.get("teacher") is not None and size is None:
            return resolve_recorded(name, record, value_range=vr, task=task)
    frame = None
    if video is not None and size is None:  # for a graph whose sizes are open
        from deltadistill.video import frame_size

        frame = frame_size(video)
    return resolve_teacher(name, input_size=size, value_range=vr, task=task, frame_size=frame)


def _fps_needs_tiles(fps: float, runtime: str) -> None:
    """``--fps`` holds time with the tile runtime's thresholds: it means nothing to another runtime."""
    from deltadistill.runtime.streams import RuntimeChoiceError

    if fps and runtime != "tiles":
        raise RuntimeChoiceError(f"--fps needs --runtime tiles (got --runtime {runtime}); "
                                 "--target holds a MAC ratio on any runtime")


def _fail(e: BaseException) -> None:
    typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(2)


@app.command()
def distill(
    teacher: str = typer.Option(..., help="teacher name (centernet, selfie, tinyseg), an .onnx file or a TF.js "
                                "model.json"),
    videos: list[Path] = typer.Option(..., help="training videos (any format ffmpeg reads)"),
    input_size: Optional[str] = typer.Option(None, help=INPUT_SIZE_HELP),
    value_range: Optional[str] = typer.Option(None, help=VALUE_RANGE_HELP),
    task: Optional[str] = typer.Option(None, help=TASK_HELP),
    out: Path = typer.Option(..., help="output directory: checkpoints/, model/, result.json"),
    steps: int = typer.Option(200, min=0),
    budget: Optional[float] = typer.Option(None, help="target delta-frame cost, fraction of the teacher's MACs"),
    keyframe_interval: int = typer.Option(8, min=1, help="largest keyframe distance seen in training"),
    clip_len: int = typer.Option(3, min=2),
    size: int = typer.Option(0, help="training crop size (0: the teacher's input size)"),
    batch_size: int = typer.Option(1, min=1),
    reduction: int = typer.Option(4, min=1, help="channel reduction gamma of compressed students"),
    candidates: str = typer.Option("compressed,full", help="students the gates choose among"),
    calibrate: bool = typer.Option(False, "--calibrate", help="choose each layer's student in closed form "
                                   "from real deltas at --budget (dd.calibrate) instead of the gate search"),
    objective: str = typer.Option("delta", help="delta: students learn each conv's change, z_t = z_k + g(x_t - x_k) "
                                  "(the paper's method); features: they learn its output, z_t = g(x_t) + b "
                                  "(feature distillation, the paper's baseline; kernel-split and full students only)"),
    lr: float = typer.Option(1e-3),
    gate_lr: float = typer.Option(5e-2),
    workers: int = typer.Option(1, min=0, help="DataLoader workers decoding video"),
    checkpoint_every: int = typer.Option(50, min=1),
    resume: bool = typer.Option(False, help="continue from the latest checkpoint in --out"),
    seed: int = typer.Option(0),
) -> None:
    """Train students and gates on unlabelled video against the teacher's own predictions."""
    import deltadistill as dd
    from deltadistill.core.config import OBJECTIVES
    from deltadistill.train.checkpointing import check_writable
    from deltadistill.video import VideoClips

    try:
        if objective not in OBJECTIVES:  # before anything is read or written
            raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        check_writable(out)
        model = _teacher(teacher, input_size, value_range, task, video=videos[0] if videos else None)
        hw = (size, size) if size else tuple(getattr(model, "input_size", (256, 256)))
        clips = VideoClips(videos, clip_len=clip_len, max_interval=keyframe_interval, size=hw, seed=seed,
                           value_range=getattr(model, "input_range", 1.0))
        if calibrate:
            if budget is None:
                raise ValueError("--calibrate needs --budget (a delta frame's share of the teacher's MACs)")
            dd.convert(model, dd.DeltaConfig(student="compressed", reduction=reduction, objective=objective))
            # the feature objective has no form for zero or sparse students: choose among the rest
            only = {"students": ("compressed", "full")} if objective == "features" else {}
            cal = dd.calibrate(model, clips, budget=budget, **only)
            typer.echo(f"calibrated: a delta frame costs {cal.cost:.1%} of the teacher; students {cal.counts()}")
        else:
            dd.convert(model, dd.DeltaConfig(reduction=reduction, candidates=tuple(candidates.split(",")),
                                             objective=objective))
        result = dd.distill(model, clips, steps=steps, budget=budget, lr=lr, gate_lr=gate_lr,
                            batch_size=batch_size, num_workers=workers, out_dir=out,
                            checkpoint_every=checkpoint_every, resume=resume, seed=seed)
    except _user_errors() as e:
        _fail(e)
        return
    if result.history:
        last = result.history[-1]
        typer.echo(f"done: {steps} steps ({objective} objective); final task {last['task']:.4f}, "
                   f"distill {last['distill']:.4f}; delta frame costs {result.reached_cost:.1%} of the teacher (budget "
                   f"{'none' if budget is None else f'{budget:.0%}'}); model in {out / 'model'}")



@app.command()
def demo(
    teacher: str = typer.Option("selfie", help="selfie (segmentation: the default, whose delta model beats "
                                "repeating keyframes at 2.4x fewer MACs), centernet (detection), isnet (background "
                                "removal, the expensive kind: 32 frames a video), or an .onnx file "
                                "(scored as a map; sparse students at a generic threshold)"),
    input_size: Optional[str] = typer.Option(None, help=INPUT_SIZE_HELP),
    value_range: Optional[str] = typer.Option(None, help=VALUE_RANGE_HELP),
    task: Optional[str] = typer.Option(None, help=TASK_HELP),
    out: Path = typer.Option(Path("runs/demo"), help="output directory"),
    quick: bool = typer.Option(False, help="a ~2 minute version (fewer steps and frames), as CI runs"),
    threads: int = typer.Option(0, help="torch threads (0: torch's default)"),
    steps: Optional[int] = typer.Option(None, min=0, help="override the plan's training steps"),
    budget: Optional[float] = typer.Option(None, help="override the plan's delta-frame MAC budget"),
    target: Optional[str] = typer.Option(None, help="evaluate holding this cost ratio against the teacher (e.g. "
                                         "3x, MACs, keyframes counted) instead of at fixed thresholds"),
) -> None:
    """The main job on the built-in default: fetch, convert, distill, evaluate, report, render."""
    from deltadistill.apps.demo import run_demo

    try:
        _check_options(threads, budget=budget)
        run_demo(teacher, out, quick=quick, threads=threads or None, steps=steps, budget=budget,
                 teacher_options={"input_size": input_size, "value_range": value_range, "task": task}, target=target)
    except _user_errors() as e:
        _fail(e)


def _check_options(threads: int = 0, rate_mode: str | None = None, **finite: float | None) -> None:
    """Refuse, before any work, option values torch or the controller would take silently or with a
    traceback: negative thread counts, an unknown --rate-mode (even without --target), and NaN or
    infinite numbers (each name in ``finite`` is an option, as ``--scene-cut`` is ``scene_cut``)."""
    import math

    if threads < 0:
        raise ValueError(f"--threads must be 0 (the backend's default) or a positive count, not {threads}")
    if rate_mode is not None:
        from deltadistill.stream.rate import MODES

        if rate_mode not in MODES:
            raise ValueError(f"--rate-mode must be one of {', '.join(MODES)}, not {rate_mode!r}")
    for name, value in finite.items():
        if value is not None and not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number, not {value}")


def _ints(text: str, what: str) -> list[int]:
    """Comma-separated keyframe intervals, each at least 1."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{what} must be whole numbers of at least 1, got {text!r}")
    return values


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from None


@app.command()
def bench(
    teacher: Optional[str] = typer.Option(None, help="teacher name, an .onnx file or a TF.js model.json (default "
                                          "with --model: the one the model records)"),
    video: Path = typer.Option(..., help="video to run both models on"),
    input_size: Optional[str] = typer.Option(None, help=INPUT_SIZE_HELP),
    value_range: Optional[str] = typer.Option(None, help=VALUE_RANGE_HELP),
    task: Optional[str] = typer.Option(None, help=TASK_HELP),
    model: Optional[Path] = typer.Option(None, help="a model directory written by distill/demo/save; "
                                         "without it, --budget calibrates one (no training)"),
    budget: Optional[float] = typer.Option(None, help="with no --model: calibrate a model whose delta frame "
                                           "costs this fraction of the teacher's MACs"),
    sparse: Optional[float] = typer.Option(None, help="with no --model: sparse students in every layer at this "
                                           "threshold (x each layer's mean |input|; dd.sparsify), e.g. 0.02"),
    sparse_stem: float = typer.Option(1.0, min=0.0, help="with --sparse: the stem's threshold (layers that see at "
                                      "least half the input size) as a share of --sparse, e.g. 0.05"),
    keyframe_interval: int = typer.Option(8, min=1),
    start: int = typer.Option(0, min=0, help="first frame"),
    frames: int = typer.Option(0, min=0, help="number of frames (0: to the end)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the report here"),
    render: Optional[Path] = typer.Option(None, help="also write a side-by-side mp4 here"),
    sweep: bool = typer.Option(False, help="also sweep keyframe intervals (and --budgets); plot accuracy vs GMACs"),
    intervals: str = typer.Option("2,4,8,16", help="keyframe intervals for --sweep"),
    budgets: str = typer.Option("", help="MAC budgets for --sweep, e.g. 0.12,0.25,0.5: one calibrated model each"),
    calib_videos: Optional[list[Path]] = typer.Option(None, help="calibration videos (default: this video's "
                                                      "frames before --start)"),
    threads: int = typer.Option(0, help="torch threads for both models (0: torch's default)"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile both models (timed after compiling)"),
    backend: str = typer.Option("torch", help="torch; onnxruntime: export both models and time the graphs; "
                                "openvino (with --runtime crop): the teacher and its crops on OpenVINO"),
    scene_cut: float = typer.Option(0.15, min=0.0, help="also a keyframe where the input jumps by more than this "
                                    "(mean |change| / mean |frame|; cuts measure 0.2-0.35), for the rival too; "
                                    "0: off"),
    runtime: str = typer.Option("dense", help="dense: the delta model, every op on whole maps; crop: the teacher "
                                "itself rerun only on boxes around what moved (needs no delta model); tiles: a "
                                "sparse model's delta frames computed only at the pixels its thresholds pass"),
    threshold_scale: float = typer.Option(1.0, min=0.0, help=THRESHOLD_SCALE_HELP),
    guard: float = typer.Option(1.0, min=0.0, help=GUARD_HELP),
    fps: float = typer.Option(0.0, min=0.0, help=FPS_HELP),
    crop_threshold: float = typer.Option(0.05, min=0.0, help="--runtime crop: a tile is recomputed once a pixel "
                                         "moved this far (share of the input's range; 0.05 is 13 grey levels)"),
    margin: int = typer.Option(0, min=0, help="--runtime crop: context around each box, input pixels "
                               "(0: the teacher's total stride, 32)"),
    reach: int = typer.Option(0, min=0, help="--runtime crop: also recompute the outputs this far around what moved"),
    fastest: bool = typer.Option(True, help="time the teacher on torch, onnxruntime and OpenVINO, at full and "
                                 "content size, for speedup_vs_fastest_dense and the rival at equal time"),
    target: Optional[str] = typer.Option(None, help="hold this cost ratio against the teacher (e.g. 3x; MACs, "
                                         "keyframes counted); --keyframe-interval is then the longest interval, and "
                                         "the rival gets the same budget"),
    rate_mode: str = typer.Option("topk", help="--target: topk (the same share of pixels in every sparse layer) "
                                  "or threshold (scale every sparse threshold)"),
) -> None:
    """Teacher vs delta model on the same frames, in one process: MACs, ms, speedup, accuracy, consistency."""
    from deltadistill.apps.bench import calibrated_model, evaluate_on_video, load_delta_model, sparse_model
    from deltadistill.apps.report import table, write_json
    from deltadistill.runtime.fastest import ENGINES
    from deltadistill.runtime.streams import RUNTIMES, runtime_names

    try:
        from deltadistill.files import check_output_file

        _fps_needs_tiles(fps, runtime)
        for flag, path in (("--json", json_out), ("--render", render)):
            if path is not None:
                check_output_file(path, flag)  # before any work: a bad path must not cost a whole run
        if backend == "onnxruntime":
            from deltadistill.extras import EXPORT, ONNXRUNTIME, require_all

            require_all((*EXPORT, *ONNXRUNTIME), "deltadistill bench --backend onnxruntime")
        _check_options(threads, rate_mode, sparse=sparse, sparse_stem=sparse_stem, scene_cut=scene_cut,
                       crop_threshold=crop_threshold, budget=budget)
        if sparse is not None and sparse < 0:
            raise ValueError(f"--sparse is a threshold (x each layer's mean |input|) and cannot be negative, not {sparse}")
        sweep_budgets = _floats(budgets, "--budgets")
        sweep_intervals = _ints(intervals, "--intervals")  # before the main run, not after it
        if runtime not in runtime_names():
            raise ValueError(f"--runtime must be one of {', '.join(runtime_names())}, not {runtime!r}")
        crop = RUNTIMES[runtime].teacher_only
        if crop and sweep:
            raise ValueError("--sweep sweeps delta models; with --runtime crop, run bench once per --crop-threshold")
        if crop and any(x is not None for x in (model, budget, sparse)):
            raise ValueError("--runtime crop reruns the teacher itself: give no --model, --budget or --sparse")
        if not crop and sum(x is not None for x in (model, budget, sparse)) != 1:
            raise ValueError("give one of --model (a trained delta model), --budget (calibrate one now) or "
                             "--sparse (sparse students at one threshold), or --runtime crop")
        if threads:
            import torch

            torch.set_num_threads(threads)
        if model is not None:  # a saved model records its teacher, as `run` reads it
            from deltadistill.runtime.resolve import pick_teacher

            teacher = pick_teacher(model, teacher)
        if not teacher:
            raise ValueError("give --teacher (or a --model, which records its teacher)")
        t = _teacher(teacher, input_size, value_range, task, video=video, model_dir=model)
        from deltadistill.apps.bench import check_frames
        from deltadistill.video import iter_frames

        if start:  # a damaged tail that --start falls in is one line, before calibration reads into it
            next(iter_frames(video, start=start, stop=start + 1), None)
        check_frames(video, start, start + frames if frames else None, keyframe_interval, compile)
        calib = None
        if (model is None and not crop) or sweep_budgets:
            calib = _calibration_clips(t, video, start, calib_videos, keyframe_interval)
        if crop:
            m, label = None, f"crop, threshold {crop_threshold:g}"
        elif model is not None:
            m, label = load_delta_model(t, model), "model"
        elif sparse is not None:
            m = sparse_model(t, calib, sparse, stem=sparse_stem)
            label = f"sparse, threshold {sparse:g}" + (f", stem at {sparse_stem:g} of it" if sparse_stem != 1.0 else "")
        else:
            m, label = calibrated_model(t, calib, budget), f"calibrated, budget {budget:g}"
        stop = start + frames if frames else None
        report, _ = evaluate_on_video(t, m, video, keyframe_interval=keyframe_interval, start=start, stop=stop,
                                      out_video=render, name=getattr(t, "name", teacher), compile=compile,
                                      backend=backend,
                                      scene_cut=scene_cut or None, runtime=runtime,
                                      crop={"threshold": crop_threshold, "margin": margin or None, "reach": reach,
                                            "threshold_scale": threshold_scale, "guard": guard,
                                            "fps": fps or None},
                                      engines=ENGINES if fastest else None, target=target,
                                      rate={"mode": rate_mode})
        if sweep:
            from deltadistill.apps.bench import sweep as run_sweep

            png = (json_out or Path("bench.json")).with_suffix(".pareto.png")
            report["sweep"] = run_sweep(t, m, video, sweep_intervals, png, start, stop,
                                        budgets=sweep_budgets, calib_data=calib,
                                        model_label=label)
            typer.echo(f"Pareto plot: {png}")
    except _user_errors() as e:
        _fail(e)
        return
    typer.echo(table(report))
    if json_out:
        write_json(json_out, report)
        typer.echo(f"report: {json_out}")


def _load_for_run(model: Optional[Path], teacher: Optional[str], input_size: Optional[str] = None,
                  value_range: Optional[str] = None, task: Optional[str] = None, video: Optional[Path] = None):
    """(teacher module, teacher name, deployed delta model or None) for `export` and `run`."""
    from deltadistill.apps.bench import load_delta_model
    from deltadistill.runtime.resolve import is_export, pick_teacher

    name = pick_teacher(model, teacher)
    t = _teacher(name, input_size, value_range, task, video=video, model_dir=model)
    m = load_delta_model(t, model) if model is not None and not is_export(model) else None
    return t, name, m


@app.command()
def export(
    model: Path = typer.Option(..., help="model directory written by distill/demo/save"),
    out: Path = typer.Option(..., help="output directory: keyframe.onnx, delta.onnx, manifest.json"),
    teacher: Optional[str] = typer.Option(None, help="teacher name (default: the one the model records)"),
    keyframe_interval: int = typer.Option(4, min=1, help="interval the manifest suggests to runners"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty --out"),
) -> None:
    """Two ONNX graphs (keyframe, delta frame) with the stream state as named inputs and outputs."""
    from deltadistill.runtime.resolve import export_dir

    try:
        from deltadistill.extras import EXPORT, require_all

        require_all(EXPORT, "deltadistill export")  # before any work: a missing extra leaves nothing behind
        t, name, m = _load_for_run(model, teacher)
        if m is None:
            raise ValueError(f"{model} is already an export")
        from deltadistill.teachers.resolve import teacher_record

        meta = {**teacher_record(t), "teacher": name, "task": getattr(t, "task", None),
                "value_range": float(getattr(t, "input_range", 1.0))}
        export_dir(m, out, force=force, input_size=tuple(t.input_size), keyframe_interval=keyframe_interval,
                   meta=meta)
    except _user_errors() as e:
        _fail(e)
        return
    typer.echo(f"exported: {out} (keyframe.onnx, delta.onnx, manifest.json)")


@app.command()
def run(
    video: list[str] = typer.Option([], help="video to run on: any file ffmpeg reads, - for standard input "
                                    "(e.g. ffmpeg ... -f mpegts -), a URL or a device; repeat for several"),
    videos_from: Optional[Path] = typer.Option(None, help="a text file listing videos, one per line"),
    out_dir: Optional[Path] = typer.Option(None, help="with several videos: write <name>.jsonl (and with "
                                           "--render <name>.mp4) here; default: next to each video"),
    render: bool = typer.Option(False, "--render", help="with several videos: also write annotated mp4s"),
    model: Optional[Path] = typer.Option(None, help="a model directory (distill/demo/save) or an export; "
                                         "without it, the plain teacher"),
    teacher: Optional[str] = typer.Option(None, help="teacher name or .onnx (default: the one the model records)"),
    input_size: Optional[str] = typer.Option(None, help=INPUT_SIZE_HELP),
    value_range: Optional[str] = typer.Option(None, help=VALUE_RANGE_HELP),
    task: Optional[str] = typer.Option(None, help=TASK_HELP),
    out: Optional[Path] = typer.Option(None, help="annotated mp4"),
    jsonl: Optional[Path] = typer.Option(None, help="one JSON line per frame"),
    backend: str = typer.Option("torch", help="torch, onnxruntime or openvino (the last two export a checkpoint "
                                "once, into MODEL/onnx; openvino also runs the plain teacher)"),
    runtime: str = typer.Option("dense", help="dense; crop: no delta model, the teacher rerun only on boxes "
                                "around what moved (torch or openvino); tiles: a sparse model's delta frames "
                                "computed only at the pixels its thresholds pass (torch)"),
    threshold_scale: float = typer.Option(1.0, min=0.0, help=THRESHOLD_SCALE_HELP),
    guard: float = typer.Option(1.0, min=0.0, help=GUARD_HELP),
    fps: float = typer.Option(0.0, min=0.0, help=FPS_HELP),
    crop_threshold: float = typer.Option(0.05, min=0.0, help="--runtime crop: how far a pixel must move for its "
                                         "tile to be recomputed (share of the input's range)"),
    keyframe_interval: int = typer.Option(4, min=1),
    scene_cut: float = typer.Option(0.15, min=0.0, help="also a keyframe where the input jumps by more than "
                                    "this (mean |change| / mean |frame|; cuts measure 0.2-0.35); 0: off"),
    threads: int = typer.Option(0, help="threads (0: the backend's default)"),
    target: Optional[str] = typer.Option(None, help="hold this cost ratio against the teacher, keyframes counted "
                                         "(e.g. 3x): each delta frame's thresholds and the keyframes are chosen "
                                         "to hold it over every 32 frames; --keyframe-interval is then the longest"),
    rate_mode: str = typer.Option("topk", help="--target: keep the same share of pixels in every sparse layer "
                                  "(topk), or scale every sparse threshold (threshold)"),
    background: Optional[str] = typer.Option(None, help="the mp4 of a segmentation teacher: the cut-out foreground "
                                             "over a plain colour (plain) or the frame blurred (blur), or the mask "
                                             "drawn over the frame (overlay); default plain for isnet, else overlay"),
) -> None:
    """Run a delta model (or its teacher) over videos: annotated mp4, JSON lines, frames/s, MACs/frame.

    Several videos (repeated --video, or --videos-from) are sharded across processes under torchrun,
    and a rerun skips those already done."""
    from deltadistill.runtime.batch import run_many, video_list
    from deltadistill.runtime.resolve import cached_export, is_export
    from deltadistill.runtime.run import run_video
    from deltadistill.runtime.streams import BACKENDS, RUNTIMES, runtime_names
    from deltadistill.teachers.resolve import teacher_record

    try:
        if backend not in BACKENDS:
            raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        _check_options(threads, rate_mode, scene_cut=scene_cut, crop_threshold=crop_threshold)
        _fps_needs_tiles(fps, runtime)
        from deltadistill.video import BACKGROUNDS

        if background is not None and background not in BACKGROUNDS:  # before the teacher loads
            raise ValueError(f"--background must be one of {', '.join(BACKGROUNDS)}, not {background!r}")
        videos = video_list(video, videos_from)
        first = Path(videos[0]) if videos and Path(videos[0]).is_file() else None
        t, name, m = _load_for_run(model, teacher, input_size, value_range, task, video=first)
        if target is not None:  # before any export or output: a target the model cannot hold is one line
            from deltadistill.stream.rate import rate_policy

            if model is not None and m is None:
                raise ValueError(f"--target steers a delta model's sparse layers frame by frame, and {model} is an "
                                 "ONNX export: give the model directory it was exported from")

            rate_policy(m, target, keyframe_interval, scene_cut or None, tuple(t.input_size),
                        backend != "torch" or runtime != "dense", {"mode": rate_mode})
        onnx_dir = None
        if runtime not in runtime_names():
            raise ValueError(f"--runtime must be one of {', '.join(runtime_names())}, not {runtime!r}")
        kind = RUNTIMES[runtime]
        if kind.teacher_only and model is not None:
            raise ValueError(f"--runtime {runtime} reruns the teacher itself: give --teacher, not --model")
        if runtime != "dense" and backend not in kind.backends:
            raise ValueError(f"--runtime {runtime} runs on {' or '.join(kind.backends)}, not --backend {backend}")
        if not kind.teacher_only and runtime != "dense" and m is None:
            raise ValueError(f"--runtime {runtime} runs a delta model: give --model (a checkpoint)")
        if runtime != "dense":  # the other runtimes run the torch model or the teacher: nothing to export
            onnx_dir = None
        elif backend == "openvino" and model is not None:
            from deltadistill.extras import EXPORT, require_all

            require_all((*EXPORT, "openvino") if m is not None else ("openvino",), "deltadistill run --backend openvino")
            onnx_dir = model if is_export(model) else cached_export(
                m, model, input_size=tuple(t.input_size), keyframe_interval=keyframe_interval,
                meta={**teacher_record(t), "teacher": name, "task": getattr(t, "task", None)})
        elif backend == "onnxruntime":
            if model is None:
                raise ValueError("--backend onnxruntime runs an exported delta model: give --model")
            from deltadistill.extras import EXPORT, ONNXRUNTIME, require_all

            needs = ONNXRUNTIME if m is None else (*EXPORT, *ONNXRUNTIME)  # an export needs only onnxruntime
            require_all(needs, "deltadistill run --backend onnxruntime")  # before MODEL/onnx or its lock is made
            onnx_dir = model if is_export(model) else cached_export(
                m, model, input_size=tuple(t.input_size), keyframe_interval=keyframe_interval,
                meta={**teacher_record(t), "teacher": name, "task": getattr(t, "task", None)})
        elif model is not None and m is None:
            raise ValueError(f"{model} is an ONNX export: run it with --backend onnxruntime")

        def one(v: str, mp4: Optional[Path], lines: Optional[Path]):
            return run_video(t, v, model=m, onnx_dir=onnx_dir, keyframe_interval=keyframe_interval, out=mp4,
                             target=target, rate={"mode": rate_mode},
                             jsonl=lines, threads=threads or None, scene_cut=scene_cut or None,
                             progress=len(videos) == 1, backend=backend, runtime=runtime,
                             crop={"threshold": crop_threshold, "threshold_scale": threshold_scale,
                                   "guard": guard, "fps": fps or None},
                             background=background)

        if len(videos) == 1 and out_dir is None and not render:
            summary = one(videos[0], out, jsonl)
        else:  # several videos (or a list): sharded over torchrun's processes, finished ones skipped
            if out is not None or jsonl is not None:
                raise ValueError("with several videos, outputs are named after each video: give --out-dir "
                                 "(and --render for mp4s), not --out/--jsonl")
            counts = run_many(videos, lambda v, mp4, lines: one(v, mp4, lines).line(), out_dir, render,
                              say=typer.echo)
            typer.echo(f"{counts['ran']} videos run, {counts['skipped']} done before")
            return
    except _user_errors() as e:
        _fail(e)
        return
    typer.echo(summary.line())
    for path in (summary.out, summary.jsonl):
        if path:
            typer.echo(f"wrote {path}")


def _calibration_clips(teacher, video: Path, start: int, videos: Optional[list[Path]], k: int):
    """Clips to calibrate on: the given videos, else the bench video's frames before the evaluated ones."""
    from deltadistill.video import VideoClips, video_info

    size, value_range = tuple(getattr(teacher, "input_size", (256, 256))), getattr(teacher, "input_range", 1.0)
    # letterboxed like the frames the benchmark scores: a sparse student's cost depends on what it sees
    if videos:
        return VideoClips(videos, clip_len=3, max_interval=k, size=size, value_range=value_range, fit="letterbox")
    n = video_info(video).frames
    if start >= n:
        raise ValueError(f"--start {start} is past the end: {video.name} has {n} frames")
    if start < 12:
        raise ValueError("calibration needs frames the benchmark does not score: give --start (at least 12) "
                         "so that frames before it calibrate, or --calib-videos")
    return VideoClips([video], clip_len=3, max_interval=k, size=size, frame_range=(0.0, start / n),
                      value_range=value_range, fit="letterbox")
