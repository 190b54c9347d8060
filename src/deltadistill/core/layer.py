"""The wrapper layers that replace a teacher conv: trainable (`DeltaConv2d`) and deployed.

Modes (set for a whole model with `deltadistill.core.modes.set_mode`):

- ``teacher``: the frozen teacher conv, nothing else.
- ``clip``: training. The batch holds ``N*T`` frames, clip by clip, the first of each clip its
  keyframe. Output frame ``t`` is ``z_k + g(x_t - x_k)``. The layer keeps ``last_pred_delta``
  and, if ``record_true_delta``, the teacher's delta ``last_true_delta = z_t - z_k``: from the
  teacher's own features when a teacher-mode pass over the same frames came just before (as in
  `distill`), else ``W(x_t - x_k)`` on this layer's input. Under the feature objective the same two
  fields hold that objective's own pair: the estimate ``g(x_t) + b`` and the teacher's ``z_t``.
- ``stream``: inference, one frame per stream at a time, with state held in a cache dict that
  `DeltaStream` binds before each call (so two streams over one model never share state).

Objectives (`DeltaConfig.objective`, one per layer): ``delta`` as above; ``features``, the paper's
feature-distillation baseline, computes a delta frame as ``z_t = g(x_t) + b`` from the frame's own
input (``b`` the teacher conv's bias), and keeps no keyframe state at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .config import OBJECTIVES
from .gate import GumbelGate
from .geometry import ConvGeometry
from .students import Student, check_feature_forms

MODES = ("teacher", "clip", "stream")


class DeltaLayer(nn.Module):
    """Common state of trainable and deployed delta layers."""

    base: nn.Conv2d

    def __init__(self) -> None:
        super().__init__()
        self.mode = "teacher"
        self.clip_len = 1
        self.cache: dict[str, Any] | None = None
        self.key: bool | Tensor = True
        self.in_hw: tuple[int, int] | None = None
        self.objective = "delta"

    def _set_objective(self, objective: str) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        self.objective = objective

    def bias_map(self, like: Tensor) -> Tensor | None:
        """The teacher conv's bias shaped to add to an output like ``like`` (None without a bias)."""
        b = self.base.bias
        return None if b is None else b.view(1, -1, *[1] * (like.dim() - 2)).to(like.dtype)

    def _features(self, x: Tensor, g: Callable[[Tensor], Tensor]) -> Tensor:
        """The feature objective's delta-frame output: ``g(x_t) + b``, from the input itself."""
        y = g(x)
        b = self.bias_map(y)
        if b is None:
            return y
        return y.add_(b) if not y.requires_grad else y + b

    def _stream_features(self, x: Tensor, g: Callable[[Tensor], Tensor]) -> Tensor:
        """Stream mode under the feature objective: keyframes run the teacher conv, delta frames
        ``g(x_t) + b``. Nothing of the keyframe is kept but its shape (to refuse a resized stream)."""
        cache = self._cache()
        key_idx, delta_idx = self._key_split(x)
        if key_idx is None and delta_idx is None:
            cache["shape"] = x.shape
            return self.base(x)
        if "shape" not in cache:
            raise RuntimeError("delta frame before any keyframe: the first frame of a stream must be a keyframe")
        if cache["shape"] != x.shape:
            raise ValueError(f"frame shape changed mid-stream: keyframe features {tuple(cache['shape'])}, "
                             f"now {tuple(x.shape)}; call reset() before changing resolution or batch")
        if key_idx is None:
            return self._features(x, g)
        zk = self.base(x[key_idx])
        z = zk.new_empty((x.shape[0], *zk.shape[1:]))
        z[key_idx] = zk
        z[delta_idx] = self._features(x[delta_idx], g)
        return z

    def _see(self, x: Tensor) -> None:
        """Remember the input size (for MAC counting); cheap on the per-frame path."""
        hw = (x.shape[-2], x.shape[-1])
        if self.in_hw != hw:
            self.__dict__["in_hw"] = hw

    def extra_repr(self) -> str:
        return f"mode={self.mode}"

    def teacher_macs(self, in_hw: tuple[int, int] | None = None) -> int:
        return ConvGeometry.of(self.base).macs(in_hw or self._hw())

    def _hw(self) -> tuple[int, int]:
        if self.in_hw is None:
            raise RuntimeError("layer has not seen an input yet: run one forward pass (count_macs does)")
        return self.in_hw

    def _cache(self) -> dict[str, Any]:
        if self.cache is None:
            raise RuntimeError("stream mode needs state: run frames through deltadistill.DeltaStream")
        return self.cache

    def _stream_from_keyframe(self, x: Tensor, g: Callable[[Tensor], Tensor],
                              running: Student | None = None) -> Tensor:
        """Stream mode that keeps the keyframe's input and output: ``z_t = z_k + g(x_t - x_k)``.

        With a ``running`` student (`Student.running`), the kept input and output move by what it
        computed on each delta frame, so the next delta is taken from there, not from the keyframe.
        """
        cache = self._cache()
        key_idx, delta_idx = self._key_split(x)
        if key_idx is None and delta_idx is None:  # all keyframes
            z = self.base(x)
            cache["x"], cache["z"] = x.clone(), z.clone()  # clone: later in-place ops must not touch the cache
            return z
        if "x" not in cache:
            raise RuntimeError("delta frame before any keyframe: the first frame of a stream must be a keyframe")
        if cache["x"].shape != x.shape:
            raise ValueError(f"frame shape changed mid-stream: keyframe features {tuple(cache['x'].shape)}, "
                             f"now {tuple(x.shape)}; call reset() before changing resolution or batch")
        if key_idx is None:  # all delta frames
            y = g(x - cache["x"])
            if running is not None:
                cache["x"].add_(running.sent())
                return cache["z"].add_(y).clone()
            return y.add_(cache["z"]) if not y.requires_grad else y + cache["z"]
        z = torch.empty_like(cache["z"])
        zk_new = self.base(x[key_idx])
        z[key_idx] = zk_new
        cache["x"][key_idx] = x[key_idx]
        cache["z"][key_idx] = zk_new
        y = g(x[delta_idx] - cache["x"][delta_idx])
        if running is not None:
            cache["x"][delta_idx] += running.sent()
            cache["z"][delta_idx] += y
            z[delta_idx] = cache["z"][delta_idx]
        else:
            z[delta_idx] = cache["z"][delta_idx] + y
        return z

    def _key_split(self, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Indices of key and delta frames in the batch, or None when all are one kind."""
        key = self.key
        if isinstance(key, bool):
            return (None, None) if key else (None, torch.empty(0))
        if bool(key.all()):
            return None, None
        if not bool(key.any()):
            return None, torch.empty(0)
        return key.nonzero().squeeze(1), (~key).nonzero().squeeze(1)


class DeltaConv2d(DeltaLayer):
    """A frozen teacher conv plus its students and, when there are several, a gate to choose.

    Like a PEFT wrapper, it holds the base layer untouched, so teacher mode is exact.
    """

    def __init__(self, base: nn.Conv2d, students: dict[str, Student], tau: float = 1.0,
                 gate_init: float = 0.0, prefer: str | None = None, objective: str = "delta") -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self._set_objective(objective)
        self.set_students(students, gate_init, prefer)
        self.tau = tau
        self.record_true_delta = False
        self.teacher_out: Tensor | None = None
        self.last_pred_delta: Tensor | None = None
        self.last_true_delta: Tensor | None = None
        self.last_gate: Tensor | None = None

    def set_students(self, students: dict[str, Student], gate_init: float = 0.0, prefer: str | None = None) -> None:
        """Hold these students, with a fresh gate only where there are several to choose among."""
        if not students:
            raise ValueError("DeltaConv2d needs at least one student")
        if self.objective == "features":
            check_feature_forms(list(students))
        self.students = nn.ModuleDict(students)
        names = list(students)
        self.gate = GumbelGate(len(names), gate_init, names.index(prefer) if prefer in names else None) \
            if len(names) > 1 else None

    @property
    def student_names(self) -> list[str]:
        return list(self.students.keys())

    def chosen(self) -> str:
        """The student a deployed model would keep (the gate's most probable choice)."""
        names = self.student_names
        return names[self.gate.choice()] if self.gate is not None else names[0]

    def gate_probs(self) -> Tensor:
        if self.gate is None:
            return torch.ones(1)
        return self.gate.probs()

    def student_macs(self, in_hw: tuple[int, int] | None = None) -> dict[str, int]:
        hw = in_hw or self._hw()
        return {n: s.macs(hw) for n, s in self.students.items()}

    def predict_delta(self, delta: Tensor) -> Tensor:
        """g(delta): the chosen student in eval, a straight-through gated sample in training."""
        if self.gate is None:
            return next(iter(self.students.values()))(delta)
        if not self.training:  # no sampling, no one-hot: just the chosen student
            return self.students[self.chosen()](delta)
        weights = self.gate(self.tau)
        self.last_gate = weights
        out: Tensor | None = None
        for w, student in zip(weights, self.students.values(), strict=True):
            y = w * student(delta) if not student.is_zero else None
            if y is not None:
                out = y if out is None else out + y
        if out is None:  # every candidate is a zero student: zeros of the output's shape
            out = next(iter(self.students.values()))(delta)
        return out

    def teacher_linear(self, delta: Tensor) -> Tensor:
        """The teacher's weight applied without bias: the true delta ``W(x_t - x_k)``."""
        return self.base._conv_forward(delta, self.base.weight, None)

    def forward(self, x: Tensor) -> Tensor:
        self._see(x)
        if self.mode == "teacher":
            z = self.base(x)
            if self.record_true_delta:  # the teacher's own features: the distillation target
                self.teacher_out = z.detach().clone()
            return z
        if self.mode == "clip":
            return self._clip(x)
        if self.mode == "stream":
            return self._stream(x)
        raise ValueError(f"unknown mode {self.mode!r}; expected one of {MODES}")

    def _clip(self, x: Tensor) -> Tensor:
        t = self.clip_len
        if x.shape[0] % t:
            raise ValueError(f"clip mode: batch of {x.shape[0]} frames is not a multiple of clip length {t}")
        n = x.shape[0] // t
        xs = x.view(n, t, *x.shape[1:])
        xk = xs[:, 0]
        zk = self.base(xk)
        if t == 1:
            return zk
        delta = (xs[:, 1:] - xk.unsqueeze(1)).flatten(0, 1)
        features = self.objective == "features"
        if features:  # the estimate g(x_t) + b itself, and below the teacher's z_t as its target
            pred = est = self._features(xs[:, 1:].flatten(0, 1), self.predict_delta)
        else:
            pred = self.predict_delta(delta)
        self.last_pred_delta = pred
        if self.record_true_delta:
            tz = self.teacher_out
            if tz is not None and tz.shape[0] == x.shape[0] and tz.shape[1:] == zk.shape[1:]:
                # the teacher ran on these frames first: its own delta z_t - z_k (or its z_t), so a
                # student also learns to undo what earlier students got wrong instead of compounding it
                tz = tz.view(n, t, *tz.shape[1:])
                self.last_true_delta = (tz[:, 1:] if features else tz[:, 1:] - tz[:, :1]).flatten(0, 1)
            else:
                with torch.no_grad():
                    self.last_true_delta = (self.base(xs[:, 1:].flatten(0, 1)) if features
                                            else self.teacher_linear(delta))
            self.teacher_out = None
        if features:
            rest = est.view(n, t - 1, *est.shape[1:])
        else:
            rest = zk.unsqueeze(1) + pred.view(n, t - 1, *pred.shape[1:])
        return torch.cat([zk.unsqueeze(1), rest], 1).flatten(0, 1)

    def _stream(self, x: Tensor) -> Tensor:
        if self.objective == "features":
            return self._stream_features(x, self.predict_delta)
        running = None
        if self.gate is None or not self.training:
            student = self.students[self.chosen()]
            running = student if student.running else None
        return self._stream_from_keyframe(x, self.predict_delta, running)


class DeployedDeltaConv2d(DeltaLayer):
    """The inference form: one student, no gate, and only ``c = z_k - g(x_k)`` kept per stream.

    A delta frame then costs ``g(x_t)`` plus one add, with no stored input and no subtraction of
    full feature maps.
    """

    def __init__(self, base: nn.Conv2d, student: Student, student_name: str, objective: str = "delta") -> None:
        super().__init__()
        self.base = base
        self._set_objective(objective)
        if objective == "features":
            check_feature_forms([student_name])
        self.student = student
        self.student_name = student_name

    def student_macs(self, in_hw: tuple[int, int] | None = None) -> dict[str, int]:
        return {self.student_name: self.student.macs(in_hw or self._hw())}

    @property
    def output_is_constant(self) -> bool:
        """True when a delta frame's output is the keyframe's: a graph may then skip what feeds only this."""
        return self.mode == "stream" and self.student.is_zero

    def chosen(self) -> str:
        return self.student_name

    def forward(self, x: Tensor) -> Tensor:
        self._see(x)
        if self.mode == "teacher":
            return self.base(x)
        if self.mode != "stream":
            raise ValueError(f"a deployed layer runs in 'teacher' or 'stream' mode, not {self.mode!r}")
        if self.objective == "features":  # g(x_t) + b: no c to keep, no keyframe pass of the student
            return self._stream_features(x, self.student)
        if not self.student.linear:  # g(x_t) - g(x_k) != g(x_t - x_k): keep x_k and z_k instead of c
            return self._stream_from_keyframe(x, self.student, self.student if self.student.running else None)
        cache = self._cache()
        key_idx, delta_idx = self._key_split(x)
        if key_idx is None and delta_idx is None:
            z = self.base(x)
            cache["c"] = z if self.student.is_zero else z - self.student(x)
            cache["shape"] = x.shape
            return z.clone() if self.student.is_zero else z
        if "c" not in cache:
            raise RuntimeError("delta frame before any keyframe: the first frame of a stream must be a keyframe")
        if cache["shape"] != x.shape:
            raise ValueError(f"frame shape changed mid-stream: keyframe features {tuple(cache['shape'])}, "
                             f"now {tuple(x.shape)}; call reset() before changing resolution or batch")
        c = cache["c"]
        if key_idx is None:
            if self.student.is_zero:
                return c.clone()
            y = self.student(x)
            return y.add_(c)
        z = torch.empty_like(c)
        zk = self.base(x[key_idx])
        z[key_idx] = zk
        c[key_idx] = zk if self.student.is_zero else zk - self.student(x[key_idx])
        z[delta_idx] = c[delta_idx] if self.student.is_zero else self.student(x[delta_idx]) + c[delta_idx]
        return z

