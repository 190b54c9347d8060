"""Every way of running frames, by name, behind one call: the apps choose a stream by name and never
branch on it.

A way of running frames is one class registered with `register_runtime`. Each takes the same
`StreamSetup` and gives the same surface:

* ``stream(x) -> outputs`` for one preprocessed frame ``(1, 3, H, W)``, and ``last_key``;
* `FrameStream.account`, called after the frame (outside any timing): the MACs that frame computed,
  or None where the engine cannot count them;
* `FrameStream.mac_report`, the teacher / keyframe / delta MACs reports amortise;
* `FrameStream.dense_teacher`, the plain teacher on the same engine, timed beside it (None: eager
  torch);
* `FrameStream.settings` and `FrameStream.stages`, what reports print of the run and its frames.

``dense`` is a converted model (or the plain teacher) in torch, ``onnx`` its exported graphs on
onnxruntime or OpenVINO, ``crop`` the teacher rerun on crops (`crop.CropStream`); `resolve` maps
the CLI's ``--runtime`` and ``--backend`` to one of them.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.macs import MacReport, count_macs, has_measured_macs, measured_delta_macs
from ..core.modes import delta_layers
from ..stream import DeltaStream, EveryK, KeyframePolicy

BACKENDS = ("torch", "onnxruntime", "openvino")


class RuntimeChoiceError(ValueError):
    """A runtime, backend or option that cannot run this model (one line, for the CLI)."""


@dataclass
class StreamSetup:
    """What every way of running frames is built from."""

    teacher: nn.Module
    model: nn.Module | None
    size: tuple[int, int]
    keyframe: KeyframePolicy | int
    keyframe_interval: int
    backend: str = "torch"
    threads: int | None = None
    compile: bool = False
    #: the runtime's own options (``crop``: threshold, tile, margin, ...)
    options: dict[str, Any] = field(default_factory=dict)
    #: an export to run (``onnx``); without one, the model is exported into a temporary folder
    onnx_dir: Path | None = None
    progress: bool = True
    #: count a data-dependent model's MACs on an engine that cannot (onnx) by running the torch model
    #: beside it, untimed: for side-by-side reports, not for a run whose whole loop is timed
    count_beside: bool = True

    def policy(self) -> KeyframePolicy:
        """A fresh copy of the keyframe policy: each stream keeps its own state."""
        return EveryK(self.keyframe) if isinstance(self.keyframe, int) else copy.deepcopy(self.keyframe)


def teacher_macs(net: nn.Module, size: tuple[int, ...]) -> int:
    """MACs of one plain forward pass at ``size`` (H, W)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(torch.zeros(1, 3, *size))
    return fc.get_total_flops() // 2


def _key(flag: bool | Tensor) -> bool:
    return flag if isinstance(flag, bool) else bool(flag.all())


class FrameStream:
    """The surface every way of running frames gives (see the module docstring)."""

    name: ClassVar[str] = ""
    #: backends it runs on
    backends: ClassVar[tuple[str, ...]] = ("torch",)
    #: reruns the teacher itself and needs no delta model (a side-by-side run then has one to compare)
    teacher_only: ClassVar[bool] = False
    #: whether `RateControl` can steer it frame by frame (the torch model's layers, uncompiled)
    steerable: ClassVar[bool] = False
    #: chosen with ``--runtime NAME`` (False: chosen by the backend, as the exported graphs are)
    selectable: ClassVar[bool] = True
    #: the options of `StreamSetup.options` it takes; others (another runtime's) are left out
    option_names: ClassVar[tuple[str, ...]] = ()

    setup: StreamSetup
    last_key: bool = True
    #: whether reports amortise its time by the mean of its frames (it chooses per frame what to run)
    amortised_by_mean: bool = False
    #: the torch model whose MACs and bytes reports count (None: the teacher itself runs)
    model: nn.Module | None = None
    #: whether each delta frame's MACs depend on the data (reports then count them frame by frame)
    measured: bool = False

    def __call__(self, x: Tensor) -> Any:
        raise NotImplementedError

    def account(self) -> float | None:
        """The MACs the last frame computed; None where they cannot be counted."""
        raise NotImplementedError

    def mac_report(self) -> MacReport:
        raise NotImplementedError

    def dense_teacher(self) -> Callable[[Tensor], Any] | None:
        """The plain teacher on this stream's engine, to time beside it; None: eager torch."""
        return None

    @property
    def policy(self) -> KeyframePolicy:
        raise NotImplementedError

    def settings(self) -> dict[str, Any] | None:
        return None

    def stages(self) -> dict[str, float] | None:
        """Where the last delta frame spent its time, for runtimes that report it."""
        return None

    def close(self) -> None:
        """Free what the stream made (temporary exports)."""


RUNTIMES: dict[str, type[FrameStream]] = {}


def register_runtime(cls: type[FrameStream]) -> type[FrameStream]:
    """Class decorator: make a way of running frames available by its ``name``."""
    RUNTIMES[cls.name] = cls
    return cls


def resolve(runtime: str, backend: str, model: nn.Module | None, onnx_dir: Path | str | None = None) -> str:
    """The registered runtime that the CLI's ``--runtime`` and ``--backend`` name: ``dense`` with a
    delta model on another engine than torch (or an export given) runs the exported graphs."""
    if runtime == "dense" and (onnx_dir is not None or (backend != "torch" and model is not None
                                                         and list(delta_layers(model)))):
        return "onnx"
    return runtime


def runtime_names() -> list[str]:
    """What ``--runtime`` takes."""
    return [n for n, cls in RUNTIMES.items() if cls.selectable]


def open_stream(name: str, setup: StreamSetup) -> FrameStream:
    """The stream ``name`` over ``setup``, refused in one line where it cannot run it."""
    cls = RUNTIMES.get(name)
    if cls is None:
        raise RuntimeChoiceError(f"unknown runtime {name!r}; known: {', '.join(sorted(RUNTIMES))}")
    if setup.backend not in cls.backends:
        raise RuntimeChoiceError(f"--runtime {name} runs on {' or '.join(cls.backends)}, not {setup.backend}")
    if setup.compile and name != "dense":
        raise RuntimeChoiceError(f"--compile is torch.compile: it has no meaning for the {name} runtime "
                                 f"on {setup.backend}")
    setup = replace(setup, options={k: v for k, v in setup.options.items() if k in cls.option_names})
    return cls(setup)  # type: ignore[call-arg]


@register_runtime
class DenseStream(FrameStream):
    """A delta model in torch (`DeltaStream`, eager or compiled), or the plain teacher (torch or
    OpenVINO) when there is none."""

    name = "dense"
    backends = ("torch", "openvino")
    steerable = True

    def __init__(self, setup: StreamSetup) -> None:
        self.setup = setup
        net = setup.model if setup.model is not None else setup.teacher
        self.delta = bool(list(delta_layers(net)))
        self.model = net if self.delta else None
        self._plain: Callable[[Tensor], Any] | None = None
        self._x: Tensor | None = None
        if not self.delta:
            if setup.backend == "openvino":
                from .fastest import dense_runner

                self._plain = dense_runner(setup.teacher, "openvino", setup.size, threads=setup.threads)
            else:
                self._plain = setup.teacher
            self._macs = teacher_macs(setup.teacher, setup.size)
            self.measured = True  # the plain teacher's MACs are exact
            return
        if setup.backend != "torch":
            raise RuntimeChoiceError("a delta model runs on other engines as exported graphs (the onnx runtime)")
        self._report: MacReport | None = None
        self._hw: tuple[int, int] | None = tuple(setup.size) if all(setup.size) else None  # type: ignore[assignment]
        self.measured = has_measured_macs(net)
        self._timed = DeltaStream(net, setup.policy(), compile=setup.compile)
        # a compiled (traced) student records no MACs: an eager stream beside it, untimed, counts them
        self._shadow = DeltaStream(net, setup.policy()) if setup.compile and self.measured else None

    @property
    def report(self) -> MacReport:
        """The model's MACs at the input size (from the setup, else the first frame's)."""
        if self._report is None:
            if self._hw is None:
                raise RuntimeError("the stream has not seen a frame, and its setup gives no input size")
            self._report = count_macs(self.model, (3, *self._hw), self.setup.keyframe_interval)
        return self._report

    @property
    def policy(self) -> KeyframePolicy:
        return self._timed.policy if self.delta else EveryK(1)

    def __call__(self, x: Tensor) -> Any:
        if self._plain is not None:
            self.last_key = True
            return self._plain(x)
        if self._hw is None:
            self._hw = (x.shape[-2], x.shape[-1])
        if self._shadow is not None:  # kept only for the untimed stream that counts a compiled run's MACs
            self._x = x
        y = self._timed(x)
        self.last_key = _key(self._timed.last_key)
        return y

    def account(self) -> float | None:
        if not self.delta:
            return self._macs
        if self._shadow is not None and self._x is not None:
            self._shadow(self._x)
            self._x = None
        if self.last_key:
            return self.report.keyframe  # the teacher plus any c = z_k - g(x_k) to fold
        return measured_delta_macs(self.model, self.report) if self.measured else self.report.delta

    def mac_report(self) -> MacReport:
        if not self.delta:
            return MacReport(self._macs, self._macs, self._macs, self.setup.keyframe_interval, [])
        return self.report

    def dense_teacher(self) -> Callable[[Tensor], Any] | None:
        return self._plain if self._plain is not None and self.setup.backend != "torch" else None


@register_runtime
class ExportedStream(FrameStream):
    """A delta model's exported keyframe and delta graphs (`export.export_onnx`) on onnxruntime or
    OpenVINO (`onnx_stream.OnnxStream`). A data-dependent model's MACs are counted by the torch model
    run beside it, untimed."""

    name = "onnx"
    backends = ("onnxruntime", "openvino")
    selectable = False

    def __init__(self, setup: StreamSetup) -> None:
        from .onnx_stream import OnnxStream

        self.setup = setup
        self._tmp: tempfile.TemporaryDirectory | None = None
        path = setup.onnx_dir
        if path is None:
            if setup.model is None:
                raise RuntimeChoiceError("the onnx runtime needs a delta model or an export (--model)")
            from .export import export_onnx

            self._tmp = tempfile.TemporaryDirectory(prefix="deltadistill-onnx-")
            path = Path(self._tmp.name) / "delta"
            export_onnx(setup.model, path, input_size=tuple(setup.size), keyframe_interval=setup.keyframe_interval)
        self.stream = OnnxStream(path, keyframe=setup.policy(), threads=setup.threads or torch.get_num_threads(),
                                 engine=setup.backend)
        self.model = setup.model
        fixed = self.stream.manifest.get("macs", {})
        self._fixed = None if fixed.get("data_dependent", True) else fixed
        self.measured = setup.count_beside and self.model is not None and has_measured_macs(self.model)
        self._shadow = DeltaStream(self.model, setup.policy()) if self.measured and self.model is not None else None
        self._x: Tensor | None = None
        self._teacher = int(fixed.get("teacher") or teacher_macs(setup.teacher, setup.size))

    @property
    def policy(self) -> KeyframePolicy:
        return self.stream.policy

    def __call__(self, x: Tensor) -> Any:
        self._x = x
        y = self.stream(x)
        self.last_key = bool(self.stream.last_key)
        return y

    def account(self) -> float | None:
        if self._shadow is not None and self._x is not None:
            self._shadow(self._x)
            self._x = None
            return self.report_.keyframe if self.last_key else measured_delta_macs(self.model, self.report_)
        if self._fixed is None:
            return None  # onnxruntime cannot count a data-dependent student's cost
        return self._fixed["keyframe"] if self.last_key else self._fixed["delta"]

    @property
    def report_(self) -> MacReport:
        if not hasattr(self, "_report"):
            assert self.model is not None
            self._report = count_macs(self.model, (3, *self.setup.size), self.setup.keyframe_interval)
        return self._report

    def mac_report(self) -> MacReport:
        if self.model is not None:
            return self.report_
        f = self._fixed or {}
        return MacReport(self._teacher, int(f.get("keyframe", self._teacher)), int(f.get("delta", self._teacher)),
                         self.setup.keyframe_interval, [])

    def dense_teacher(self) -> Callable[[Tensor], Any] | None:
        from .fastest import dense_runner

        return dense_runner(self.setup.teacher, self.setup.backend, self.setup.size,  # type: ignore[arg-type]
                            threads=self.setup.threads or torch.get_num_threads())

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class _TeacherCosted(FrameStream):
    """A stream over an inner runtime (``self.stream``) whose cost reports count in teacher MACs: a
    keyframe costs the teacher, a delta frame what the runtime says it computed."""

    stream: Any
    _teacher: int

    @property
    def policy(self) -> KeyframePolicy:
        return self.stream.policy

    def __call__(self, x: Tensor) -> Any:
        y = self.stream(x)
        self.last_key = bool(self.stream.last_key)
        return y

    def mac_report(self) -> MacReport:
        return MacReport(self._teacher, self._teacher, self._teacher, self.setup.keyframe_interval, [])


@register_runtime
class CroppedStream(_TeacherCosted):
    """The teacher itself, rerun on delta frames only on crops around what moved (`crop.CropStream`).
    A delta frame costs about its crops' share of the frame."""

    name = "crop"
    backends = ("torch", "openvino")
    teacher_only = True
    option_names = ("threshold", "tile", "margin", "reach", "bucket", "align", "min_tiles", "max_crops", "rekey",
                    "hold_gates", "cache_dir")

    def __init__(self, setup: StreamSetup) -> None:
        from .crop import CropStream

        self.setup = setup
        self.stream = CropStream(setup.teacher, setup.policy(), backend=setup.backend, threads=setup.threads,
                                 **setup.options).prepare(setup.progress)
        self._teacher = teacher_macs(setup.teacher, setup.size)
        self.measured = True


    def account(self) -> float | None:
        return self._teacher if self.last_key else self.stream.last_cost * self._teacher


    def dense_teacher(self) -> Callable[[Tensor], Any] | None:
        from .fastest import dense_runner

        return dense_runner(self.setup.teacher, self.setup.backend, self.setup.size,  # type: ignore[arg-type]
                            threads=self.setup.threads)

    def settings(self) -> dict[str, Any] | None:
        s = self.stream
        return {"threshold": s.threshold_share, "tile": s.tile, "margin": s.margin, "reach": s.reach,
                "bucket": list(s.bucket), "min_tiles": s.min_tiles, "max_crops": s.max_crops, "rekey": s.rekey,
                "gates_held": len(s.gate_slots)}

    def stages(self) -> dict[str, float] | None:
        s = self.stream
        if self.last_key:
            return None
        return {"active": s.last_active, "computed": s.last_cost, "crops": len(s.last_crops), **s.last_ms}


@register_runtime
class TiledStream(_TeacherCosted):
    """A sparse delta model's delta frames computed only at the pixels its thresholds pass
    (`tiles.TileStream`), in time. Its options are `TileStream`'s: ``threshold_scale``,
    ``dense_level``, ``tile``, ``reference``, ``delta_threads``, ``keyframe_engine`` (OpenVINO where
    installed); and ``guard`` (`tile_guard.GuardedTiles`, default 1): where tiles cost more than that
    times the fastest dense teacher (OpenVINO at the run's size where installed), frames run it
    instead, until the input quiets (0: tiles always); ``fps``: a frame rate to hold on measured time
    (`tile_rate.FrameRate`, the threshold scale as the knob), refused before any work where even a
    still input could not reach it."""

    name = "tiles"
    backends = ("torch",)
    option_names = ("threshold_scale", "dense_level", "tile", "reference", "delta_threads", "keyframe_engine",
                    "guard", "fps")

    def __init__(self, setup: StreamSetup) -> None:
        from .tiles import TileStream

        if setup.model is None:
            raise RuntimeChoiceError("the tiles runtime runs a sparse delta model: give --model or --sparse")
        self.setup = setup
        options = dict(setup.options)
        guard = float(options.pop("guard", 1.0) or 0.0)
        fps = float(options.pop("fps", None) or 0.0)
        import importlib.util

        engine = "openvino" if importlib.util.find_spec("openvino") else "torch"
        if "keyframe_engine" not in options:  # keyframes on OpenVINO where it is installed: ~2x its dense time
            options["keyframe_engine"] = engine  # against 4-8x in torch (BENCHMARKS.md, second pass)
        self.stream = TileStream(setup.model, setup.policy(), **options)
        if guard > 0 or fps > 0:
            from .fastest import dense_runner
            from .tile_guard import GuardedTiles
            from .tile_rate import FrameRate, RateError

            try:
                rate = FrameRate(fps, setup.keyframe_interval) if fps > 0 else None
            except RateError as e:
                raise RuntimeChoiceError(f"--fps: {e}") from e
            self.stream = GuardedTiles(self.stream, dense_runner(setup.teacher, engine, setup.size,
                                                                 threads=setup.threads),
                                       guard=guard if guard > 0 else float("inf"), rate=rate)
            self.amortised_by_mean = True  # its frames follow no K: reports amortise by the mean
            if rate is not None:
                self._check_rate(fps, setup)
        self.model = setup.model
        self.measured = True
        self._teacher = teacher_macs(setup.teacher, setup.size)

    def account(self) -> float | None:
        return self._teacher if self.last_key else self.stream.last_macs


    def settings(self) -> dict[str, Any] | None:
        s = self.stream
        out = {"threshold_scale": s.threshold_scale, "dense_level": s.dense_level, "tile": s.tile,
               "dense_ops": [f"{op} {node}: {why}" for _, op, node, why in s.fallbacks]}
        if hasattr(s, "counts"):  # the guard: frames per mode, and how often tiles gave way
            out["guard"] = {"guard": s.guard, **s.counts}
        if getattr(s, "rate", None) is not None:
            out["rate"] = {**s.rate.report(), "reachable_fps": self.reachable}
        return out

    def _check_rate(self, fps: float, setup: StreamSetup) -> None:
        """Before any work: refuse, in one line, a rate that neither the dense teacher nor tiles on a
        still frame reach (`GuardedTiles.time_still`)."""
        from .tile_rate import reachable_fps

        k = setup.keyframe_interval
        dense_ms, key_ms, floor_ms = self.stream.time_still(torch.full((1, 3, *setup.size), 0.5))
        self.reachable = max(reachable_fps(key_ms, floor_ms, k), 1000.0 / dense_ms)
        if fps > self.reachable:
            raise RuntimeChoiceError(
                f"--fps {fps:g} cannot be held here: at most {self.reachable:.1f} fps (the dense teacher "
                f"{dense_ms:.0f} ms a frame; tiles on a still frame: a {key_ms:.0f} ms keyframe every {k} frames "
                f"and {floor_ms:.0f} ms between)")

    def stages(self) -> dict[str, float] | None:
        if self.last_key:
            return None
        return {"computed": self.stream.last_cost, **self.stream.last_ms}
