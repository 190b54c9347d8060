"""`calibrate(model, clips, budget)`: choose every layer's student and rank in closed form, from real deltas.

Why: the paper's kernel split keeps the top singular directions of the teacher's *weights*, but
a layer's input deltas do not live there, so at small ranks it drops most of the delta's energy,
layer after layer, until delta frames barely move. Measuring the covariance of each layer's real
input deltas fixes both halves of the problem at once:

- the whitened SVD (`split_spectrum` with ``cov``) gives, for every rank, the split that loses
  the least expected output-delta energy, and
- its spectrum says what each extra rank buys, so one greedy pass over all layers can spend a MAC
  budget where it keeps the most delta energy per MAC: ``zero`` where deltas do not matter, a
  rank of 1 to full where they do, the teacher's own weights (``full``) where a split is no cheaper.

With ``objective="output"`` (the default) each option is priced instead by its error at the
model's *output* (`sensitivity.output_sensitivity`): a layer whose errors the rest of the network
amplifies gets a costly, exact student, one whose errors vanish gets ``zero``, and the ``sparse``
student (the teacher's weights on the pixels that moved) is priced at every threshold. The local
objective (``"local"``, the share of each layer's own delta energy) stays available; issue 9 showed
that it can pick a mix that recovers nothing at the output.

The result is a hard choice per layer (no gate left to train), ready for `distill` to fine-tune.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..core.geometry import ConvGeometry, explicit_pad
from ..core.layer import DeltaConv2d
from ..core.macs import count_macs
from ..core.modes import delta_layers, mode
from ..core.students import (
    STUDENTS,
    CompressedStudent,
    SparseStudent,
    channel_weights,
    pixel_scores,
    split_spectrum,
)
from .sensitivity import LayerSensitivity, output_sensitivity

CALIBRATION_STUDENTS = ("zero", "compressed", "sparse", "full")
LOCAL_STUDENTS = ("zero", "compressed", "full")
OBJECTIVES = ("output", "local")
Option = tuple[int, float, str, Any]  # (MACs, error, student, rank or (threshold, density))
KEEP_FLOOR = 1e-3


@dataclass
class LayerChoice:
    """One layer's calibrated student: its MACs and the share of the delta energy it keeps."""

    name: str
    student: str
    rank: int | None
    macs: int
    teacher_macs: int
    kept: float
    threshold: float | None = None


@dataclass
class CalibrationResult:
    """What `calibrate` chose; ``cost`` is a delta frame's MACs over the teacher's."""

    budget: float | None  # None for `sparsify`, which sets thresholds, not a budget
    cost: float | None  # None where the cost depends on the frames (measure it with the bench)
    clips: int
    layers: list[LayerChoice] = field(default_factory=list)
    objective: str = "output"
    #: with objective "output": 1 - predicted output error / the output's change (first order, summed
    #: over layers as if their errors were independent); what `recovered_share` should then measure
    predicted_recovered: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.layers:
            out[c.student] = out.get(c.student, 0) + 1
        return out


def _patch_covariance(delta: Tensor, geo: ConvGeometry) -> tuple[Tensor, int]:
    """Sum of ``p p^T`` over the vertical patches ``p`` (Cin_g*kh) a kernel split's first conv sees."""
    (kh, _), (sh, _), (dh, _) = geo.kernel, geo.stride, geo.dilation
    x = explicit_pad(delta.float(), geo.pad, geo.padding_mode)
    cols = F.unfold(x, (kh, 1), dilation=(dh, 1), stride=(sh, 1))  # (B, Cin*kh, L), channel-major
    b, _, n = cols.shape
    cols = cols.view(b, geo.groups, -1, n)
    return torch.einsum("bgdl,bgel->gde", cols, cols).double(), b * n


@torch.no_grad()
def delta_covariances(model: nn.Module, clips: Sequence[Tensor], progress: bool = True) -> dict[str, Tensor]:
    """Per delta layer, the covariance (G, Cin_g*kh, Cin_g*kh) of its input deltas ``x_t - x_k``.

    The teacher runs on each clip (keyframe first); every later frame's input to a layer, minus the
    keyframe's, is one delta. Also leaves each layer's input size set for MAC counting.
    """
    layers = [(n, m) for n, m in delta_layers(model) if isinstance(m, DeltaConv2d)]
    if not layers:
        raise ValueError("model has no trainable delta layers: convert it with deltadistill.core.convert first")
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    t_len = 0

    def hook(name: str, geo: ConvGeometry):
        def fn(_m: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0]
            xs = x.view(-1, t_len, *x.shape[1:])
            cov, n = _patch_covariance((xs[:, 1:] - xs[:, :1]).flatten(0, 1), geo)
            sums[name] = sums[name] + cov if name in sums else cov
            counts[name] = counts.get(name, 0) + n
        return fn

    handles = [m.register_forward_pre_hook(hook(n, ConvGeometry.of(m.base))) for n, m in layers]
    try:
        with mode(model, "teacher"):
            for clip in tqdm(clips, desc="calibrate: delta statistics", disable=not progress):
                if clip.dim() != 4 or clip.shape[0] < 2:
                    raise ValueError(f"a calibration clip must be (T >= 2, C, H, W), got {tuple(clip.shape)}")
                t_len = clip.shape[0]
                model(clip)
    finally:
        for h in handles:
            h.remove()
    return {n: sums[n] / max(counts[n], 1) for n, _ in layers}


def _output_options(layer: DeltaConv2d, st: LayerSensitivity, allowed: Sequence[str]) -> list[Option]:
    """(MACs, output error per sample, student, param) for every student this layer could take."""
    geo, hw = ConvGeometry.of(layer.base), layer._hw()
    teacher = geo.macs(hw)
    opts: list[Option] = []
    if "zero" in allowed:
        opts.append((0, st.mean(st.zero), "zero", None))
    if "full" in allowed:
        opts.append((teacher, 0.0, "full", None))
    if "compressed" in allowed and st.ranks is not None:
        for r, err in enumerate(st.mean(st.ranks).tolist(), start=1):
            macs = CompressedStudent(geo, r).macs(hw)
            if macs >= teacher and "full" in allowed:
                break
            opts.append((macs, err, "compressed", r))
    if "sparse" in allowed and st.thresholds is not None:
        density = st.density / max(st.density_samples, 1)
        for tau, err, share in zip(st.thresholds.tolist(), st.mean(st.sparse).tolist(), density.tolist(), strict=True):
            opts.append((round(share * teacher), err, "sparse", (tau, share)))
    return opts


def _options(layer: DeltaConv2d, cov: Tensor, allowed: Sequence[str]) -> list[tuple[int, float, str, int | None]]:
    """(MACs, share of delta energy lost, student, rank) for every student this layer could take."""
    geo, hw = ConvGeometry.of(layer.base), layer._hw()
    teacher = geo.macs(hw)
    _, _, energy = split_spectrum(layer.base.weight.detach(), geo.groups, cov)
    total = float(energy.sum())
    kept = (energy.sum(0).cumsum(0) / total).clamp(0, 1) if total > 0 else torch.ones(energy.shape[1])
    # a delta passes through layer after layer, so what reaches the output is roughly the product of
    # what each layer keeps: the error to minimise in sum is -log(kept), floored so zero stays finite
    lost = (-kept.clamp_min(KEEP_FLOOR).log()).tolist()
    opts: list[tuple[int, float, str, int | None]] = []
    if "zero" in allowed:
        opts.append((0, -math.log(KEEP_FLOOR) if total > 0 else 0.0, "zero", None))
    if "full" in allowed:
        opts.append((teacher, 0.0, "full", None))
    if "compressed" in allowed:
        for r, err in enumerate(lost, start=1):
            macs = CompressedStudent(geo, r).macs(hw)
            if macs >= teacher and "full" in allowed:
                break
            opts.append((macs, err, "compressed", r))
    return opts


def _hull(opts: list[tuple[int, float, str, int | None]]) -> list[tuple[int, float, str, int | None]]:
    """The options on the lower convex hull of (MACs, error): only those a greedy allocation would pick."""
    pts = []
    for o in sorted(opts, key=lambda o: (o[0], o[1])):
        if pts and o[1] >= pts[-1][1]:
            continue  # costs more, keeps no more
        while len(pts) >= 2:
            (c0, e0, *_), (c1, e1, *_) = pts[-2], pts[-1]
            if (e0 - e1) * (o[0] - c1) <= (e1 - o[1]) * (c1 - c0):  # pts[-1] buys less per MAC than o
                pts.pop()
            else:
                break
        pts.append(o)
    return pts


def allocate(hulls: dict[str, list[tuple[int, float, str, int | None]]], budget_macs: float) -> dict[str, int]:
    """Greedy by error removed per MAC across layers (optimal on the convex hulls); index into each hull."""
    pick = {n: 0 for n in hulls}
    spent = sum(h[0][0] for h in hulls.values())
    if spent > budget_macs:
        raise ValueError(f"budget too small: the cheapest students already cost {spent / 1e6:.1f} MMAC, "
                         f"more than the {budget_macs / 1e6:.1f} MMAC allowed; allow 'zero' or raise the budget")

    def push(heap: list, name: str) -> None:
        i, h = pick[name], hulls[name]
        if i + 1 < len(h):
            dc, de = h[i + 1][0] - h[i][0], h[i][1] - h[i + 1][1]
            heapq.heappush(heap, (-de / max(dc, 1), name))

    heap: list = []
    for n in hulls:
        push(heap, n)
    while heap:
        _, n = heapq.heappop(heap)
        i, h = pick[n], hulls[n]
        step = h[i + 1][0] - h[i][0]
        if spent + step > budget_macs:
            continue  # this layer's next step does not fit; cheaper steps elsewhere still may
        spent += step
        pick[n] = i + 1
        push(heap, n)
    return pick


def calibrate(model: nn.Module, data: Any, *, budget: float, clips: int = 16,
              students: Sequence[str] | None = None, objective: str = "output", probes: int = 2,
              progress: bool = True) -> CalibrationResult:
    """Give each delta layer of a converted ``model`` one student, chosen from real video deltas.

    ``data``: clips (T >= 2, C, H, W) with the keyframe first, e.g. `deltadistill.video.VideoClips`
    (items may be ``(clip, labels)`` pairs); the first ``clips`` are used. ``budget``: a delta
    frame's MACs as a fraction of the teacher's, layers that stay dense included (a ``sparse``
    student counts at the share of pixels it computed on the calibration clips). ``students``:
    which of ``zero``, ``compressed`` (any rank), ``sparse`` (any threshold; output objective only)
    and ``full`` a layer may take; by default all those the objective can price. ``objective``:
    ``"output"`` prices each option by its error at the model's output (``probes`` random
    projections per frame), ``"local"`` by the share of the layer's own delta energy it loses. In
    place; each layer keeps exactly its chosen student (a kernel split initialised by the SVD
    whitened by the real deltas).
    """
    if not 0 < budget <= 1:
        raise ValueError(f"budget is a fraction of the teacher's MACs in (0, 1], got {budget}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    allowed = CALIBRATION_STUDENTS if objective == "output" else LOCAL_STUDENTS
    students = tuple(students) if students is not None else allowed
    unknown = set(students) - set(allowed)
    if unknown or not students:
        raise ValueError(f"calibrate with objective {objective!r} chooses among {allowed}, got {list(students)}")
    items = [data[i] for i in range(min(clips, len(data)))]
    items = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
    if not items:
        raise ValueError("no calibration clips")
    covs = delta_covariances(model, items, progress)
    layers = dict((n, m) for n, m in delta_layers(model) if isinstance(m, DeltaConv2d))
    report = count_macs(model, tuple(items[0].shape[1:]))
    fixed = report.teacher - sum(r.teacher for r in report.layers if r.name in layers)
    fixed += sum(r.delta for r in report.layers if r.name not in layers)
    if objective == "output":
        sens, change = output_sensitivity(model, items, covs, probes=probes, with_compressed="compressed" in students,
                                          with_sparse="sparse" in students, progress=progress)
        hulls = {n: _hull(_output_options(m, sens[n], students))
                 for n, m in tqdm(layers.items(), desc="calibrate: pricing options", disable=not progress)}
    else:
        hulls = {n: _hull(_options(m, covs[n], students)) for n, m in layers.items()}
    pick = allocate(hulls, budget * report.teacher - fixed)
    config = model.delta_report.config
    result = CalibrationResult(budget=budget, cost=0.0, clips=len(items), objective=objective)
    total, lost = fixed, 0.0
    for n, m in tqdm(layers.items(), desc="calibrate: building students", disable=not progress):
        macs, err, kind, param = hulls[n][pick[n]]
        rank, threshold = (param, None) if kind == "compressed" else (None, None)
        if kind == "compressed":
            student = CompressedStudent.from_teacher(m.base, config, rank=rank, cov=covs[n])
        elif kind == "sparse":
            threshold, share = param
            student = SparseStudent.from_teacher(m.base, config, threshold=threshold, density=share)
        else:
            student = STUDENTS[kind].from_teacher(m.base, config)
        m.set_students({kind: student.to(m.base.weight.device)})
        total += macs
        if objective == "output":
            zero_err = sens[n].mean(sens[n].zero)
            kept = 1.0 - err / zero_err if zero_err > 0 else 1.0
            lost += err
        else:
            kept = 0.0 if kind == "zero" and err > 0 else math.exp(-err)
        result.layers.append(LayerChoice(n, kind, rank, macs, m.teacher_macs(), kept, threshold))
    result.cost = total / report.teacher
    if objective == "output":
        result.predicted_recovered = 1.0 - lost / change if change > 0 else 1.0
    return result


@torch.no_grad()
def sparsify(model: nn.Module, data: Any, *, level: float = 0.02, clips: int = 8, first: float = 0.25,
             stem: float = 1.0, weighted: bool = False, running: bool = False,
             element: bool = False) -> CalibrationResult:
    """Give every delta layer a `SparseStudent` whose threshold is ``level`` times the layer's mean
    ``|input|`` on the keyframes of ``clips`` clips of ``data``: one knob, no search.

    ``first``: the model's first conv, when it is a delta layer, gets ``first * level`` instead. It
    sees the frame itself, whose small changes (shading, slow motion) reach every later layer, while
    each later threshold is relative to its own activations. Measured on selfie over all of `bikes`
    (BENCHMARKS.md note 29), level 0.15, K=4: with the first conv at the full level, mIoU 0.877 at
    2.46x fewer MACs; at a quarter, 0.915 at 2.36x (0.917 at 1.89x with the first conv dense).

    ``stem``: every other layer whose input is at least half the first conv's input in height and
    width (the stem, before the second downsampling) gets ``stem * level``, and the first conv the
    lower of its two shares. The stem's activations are still close to pixels, and what it drops
    passes through every later layer. Measured on centernet over all of `bikes` (BENCHMARKS.md note
    30), K=4: raising its 4 layers at 256x256 alone from 0.005 to 0.05 cut mAP50 from 0.999 to
    0.786, while raising any other group of layers by as much cost at most 0.003. With the stem at
    0.05 of the level and the rest at 0.1, 2.18x fewer MACs and mAP50 0.903 against the rival's
    0.815. selfie gains nothing from it (its first conv was the sensitive one), so the default is 1.

    Measured on centernet over all of `bikes` (BENCHMARKS.md, "whole video", note 17): 0.01 saves
    1.24x (1.26x with its ends converted too) and beats repeating keyframes at equal MACs (mAP50
    0.999 against 0.938); 0.02 saves 1.4x and its delta frames recover 96-98% of the heatmap's
    change, but it only draws level.
    ``weighted``: score pixels by a mean over channels weighted by the teacher weights each feeds
    (`students.pixel_scores`), and scale thresholds by the same weighted mean. ``running``: the
    `RunningSparseStudent` kind, whose reference moves with what it computed, so a delta frame pays
    only for what moved since the last frame, not since the keyframe.
    """
    if level < 0 or first < 0 or stem < 0:
        raise ValueError(f"level, first and stem are shares of a layer's mean |input|, >= 0; got {level}, {first}, {stem}")
    items = [data[i] for i in range(min(clips, len(data)))]
    items = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
    if not items:
        raise ValueError("no calibration clips")
    layers = dict((n, m) for n, m in delta_layers(model) if isinstance(m, DeltaConv2d))
    if not layers:
        raise ValueError("model has no trainable delta layers: convert it with deltadistill.core.convert first")
    scale = dict.fromkeys(layers, 0.0)
    in_hw: dict[str, tuple[int, int]] = {}
    weights = {n: channel_weights(m.base) if weighted else None for n, m in layers.items()}

    def hook(name: str):
        def fn(_m: nn.Module, args: tuple[Tensor, ...]) -> None:
            scale[name] += float(pixel_scores(args[0], weights[name]).mean())
            in_hw[name] = (args[0].shape[-2], args[0].shape[-1])
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        with mode(model, "teacher"):
            for clip in items:
                model(clip[:1])
    finally:
        for h in handles:
            h.remove()
    config = model.delta_report.config
    result = CalibrationResult(budget=None, cost=None, clips=len(items), objective="uniform")
    head = next((n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, DeltaConv2d))), None)
    top_h, top_w = in_hw[head] if head in in_hw else max(in_hw.values())
    for n, m in layers.items():
        h, w = in_hw[n]
        share = min(first, stem) if n == head else stem if h >= top_h // 2 and w >= top_w // 2 else 1.0
        tau = share * level * scale[n] / len(items)
        kind = STUDENTS["sparse" + ("_element" if element else "") + ("_running" if running else "")]
        student = kind.from_teacher(m.base, config, threshold=tau, weighted=weighted)
        m.set_students({kind.name: student.to(m.base.weight.device)})
        result.layers.append(LayerChoice(n, kind.name, None, m.teacher_macs(), m.teacher_macs(), 1.0, tau))
    return result
