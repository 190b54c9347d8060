"""Students: cheap linear maps that approximate a teacher conv applied to a feature *delta*.

A student is one small class registered by name. Everything else (conversion, the gate search,
the MAC counter, deploy, save/load) works through the `Student` interface, so a new kind of
student needs no change anywhere else.

Every student is bias-free. A *linear* one (``g(a) - g(b) == g(a - b)``, the default) lets deploy
keep only ``c = z_k - g(x_k)`` at a keyframe and compute ``z_t = c + g(x_t)`` afterwards; a student
that sets ``linear = False`` (e.g. `SparseStudent`, whose mask depends on the delta) is deployed
with the keyframe's input and output kept instead: ``z_t = z_k + g(x_t - x_k)``.

A student whose cost depends on the data (``data_dependent = True``) reports the MACs of its last
call through `Student.measured_macs`; reports then count measured MACs, not a nominal figure.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .geometry import ConvGeometry, explicit_pad

if TYPE_CHECKING:
    from .config import DeltaConfig

STUDENTS: dict[str, type[Student]] = {}

# Spatial size used to decide, at conversion time, whether a student is cheaper than its teacher.
NOMINAL_HW = (128, 128)


def check_names(config: DeltaConfig) -> None:
    """Refuse a config that names a student the registry does not hold (at conversion: see `convert`)."""
    unknown = [n for n in config.student_names if n not in STUDENTS]
    if unknown:
        raise ValueError(f"unknown student(s) {unknown}; registered: {sorted(STUDENTS)}")


def check_feature_forms(names: tuple[str, ...] | list[str]) -> None:
    """Refuse students with no feature form (`Student.feature_form`) under ``objective="features"``."""
    none = [n for n in names if n in STUDENTS and not STUDENTS[n].feature_form]
    if none:
        have = sorted(n for n, c in STUDENTS.items() if c.feature_form)
        raise ValueError(f"student(s) {none} have no feature form (nothing to distil from x_t alone): "
                         f"objective='features' takes only {have}")


def register_student(cls: type[Student]) -> type[Student]:
    """Class decorator: make a student available to `DeltaConfig` by its ``name``."""
    STUDENTS[cls.name] = cls
    return cls


class Student(nn.Module):
    """Base class. Subclasses set ``name`` and implement the four methods below."""

    name: ClassVar[str]
    #: True for a student whose output is always zero (the layer then skips calling it).
    is_zero: ClassVar[bool] = False
    #: False for a student with ``g(a) - g(b) != g(a - b)``: deploy then keeps ``x_k`` and ``z_k``.
    linear: ClassVar[bool] = True
    #: True for a student whose MACs depend on the delta it sees (see `measured_macs`).
    data_dependent: ClassVar[bool] = False
    #: True for a student whose reference moves with what it computed (see `RunningSparseStudent`):
    #: after each delta frame the layer adds `sent` to its stored input and the output to ``z``.
    running: ClassVar[bool] = False
    #: True where `convert` should leave the model's first and last conv dense by default. The paper
    #: does so for its low-rank students, whose error costs most at the ends; a student that is exact
    #: wherever it computes (`SparseStudent`) has no such error, and the first conv, which sees the
    #: frame itself, is a large share of a small network's MACs (12% of selfie's).
    keeps_ends_dense: ClassVar[bool] = True
    #: False for a student with no form under the feature objective (``z_t = g(x_t) + b``): `ZeroStudent`
    #: has nothing to train, and the sparse kinds save only by skipping pixels that did not move, which
    #: ``x_t`` alone does not tell.
    feature_form: ClassVar[bool] = True

    @classmethod
    def unsupported_reason(cls, conv: nn.Conv2d, config: DeltaConfig) -> str | None:
        """Why this student can't (or shouldn't) replace ``conv``; None if it can."""
        return None

    @classmethod
    def from_teacher(cls, conv: nn.Conv2d, config: DeltaConfig) -> Student:
        raise NotImplementedError

    @classmethod
    def from_spec(cls, conv: nn.Conv2d, config: DeltaConfig, spec: dict[str, Any]) -> Student:
        """Rebuild a student whose shape `spec` describes (checkpoints store it per layer)."""
        return cls.from_teacher(conv, config)

    def spec(self) -> dict[str, Any]:
        """What besides the teacher conv and the config fixes this student's shape (JSON-able)."""
        return {}

    def forward(self, delta: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def macs(self, in_hw: tuple[int, int]) -> int:
        """Multiply-accumulates for one image of spatial size ``in_hw``: exact for a static student,
        the calibrated expectation for a data-dependent one."""
        raise NotImplementedError

    def measured_macs(self) -> int | None:
        """MACs of the last forward, per image, for a data-dependent student; None otherwise."""
        return self.__dict__.get("last_macs") if self.data_dependent else None

    @torch.no_grad()
    def scale_output_(self, scale: Tensor) -> None:
        """Multiply each output channel by ``scale`` (used to fold a following BN at deploy).

        The default scales the last conv the student registers, which is right for any student
        that ends in a conv; a student with another last linear step overrides this.
        """
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        if convs:
            convs[-1].weight.mul_(scale.view(-1, 1, 1, 1).to(convs[-1].weight.dtype))


@register_student
class FullStudent(Student):
    """A trainable copy of the teacher conv without its bias: exact at initialisation."""

    name = "full"

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    @classmethod
    def from_teacher(cls, conv: nn.Conv2d, config: DeltaConfig) -> FullStudent:
        c = copy.deepcopy(conv)
        c.bias = None
        c.weight = nn.Parameter(conv.weight.detach().clone())
        c.requires_grad_(True)
        return cls(c)

    def forward(self, delta: Tensor) -> Tensor:
        return self.conv(delta)

    def macs(self, in_hw: tuple[int, int]) -> int:
        return ConvGeometry.of(self.conv).macs(in_hw)


def bottleneck_width(geo: ConvGeometry, config: DeltaConfig) -> int:
    """Per-group rank of the kernel split: ``min(Cin, Cout)/gamma`` or ``Cout/gamma``, capped at full rank."""
    cin_g, cout_g = geo.cin // geo.groups, geo.cout // geo.groups
    base = min(cin_g, cout_g) if config.policy == "min" else cout_g
    r = max(1, base // config.reduction)
    return min(r, cin_g * geo.kernel[0], cout_g * geo.kernel[1])


def split_spectrum(weight: Tensor, groups: int, cov: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Factors of the kernel split at full rank, best directions first, and what each direction carries.

    Each group's weight is viewed as ``M`` of shape ``(Cin_g*kh, Cout_g*kw)`` (rows: the vertical
    patch a ``kh x 1`` conv sees; columns: the ``1 x kw`` conv's outputs). Returns ``a``
    (G, Cin_g*kh, R), ``b`` (G, R, Cout_g*kw) and ``energy`` (G, R) with ``M = a @ b``, so that
    keeping the first ``r`` directions is the best rank-``r`` split.

    Without ``cov`` "best" means closest to ``M`` (the paper's truncated SVD); ``energy`` is then
    ``s^2``. With ``cov`` (G, Cin_g*kh, Cin_g*kh), the covariance of the vertical patches of the
    layer's real input deltas, it means losing the least expected output-delta energy
    ``E||(M - M_r)^T p||^2``: the SVD of ``L^T M`` with ``cov = L L^T`` (from its eigenvectors,
    with a small ridge), mapped back through ``L^-T``. ``energy`` is then the expected delta energy
    each direction carries.
    """
    cout, cin_g, kh, kw = weight.shape
    cout_g = cout // groups
    m = weight.double().reshape(groups, cout_g, cin_g, kh, kw).permute(0, 2, 3, 1, 4)
    m = m.reshape(groups, cin_g * kh, cout_g * kw)
    if cov is None:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        root = s.sqrt()
        return u * root[:, None, :], root[:, :, None] * vh, s.square()
    cov = cov.double()
    evals, q = torch.linalg.eigh(cov)
    # a small ridge: directions real deltas never took get a finite, small weight rather than 1/0
    evals = evals.clamp_min(0) + 1e-3 * evals.clamp_min(0).mean(-1, keepdim=True).clamp_min(1e-12)
    u, s, vh = torch.linalg.svd((q * evals.sqrt()[:, None, :]).transpose(1, 2) @ m, full_matrices=False)
    root = s.sqrt()
    a = q @ ((u * root[:, None, :]) / evals.sqrt()[:, :, None])
    return a, root[:, :, None] * vh, s.square()


@register_student
class CompressedStudent(Student):
    """Kernel split (``kh x 1`` to a bottleneck, then ``1 x kw`` back), from a truncated spatial SVD.

    The teacher weight of each group, viewed as a ``(Cin*kh) x (Cout*kw)`` matrix, is factorised
    as ``U S V^T``; keeping ``r`` singular values gives the two thin convs. At full rank the pair
    reproduces the teacher exactly. Grouped and depthwise convs are split group by group, so the
    student keeps the teacher's grouping (for a depthwise 3x3 this is a rank-1 separable filter).
    """

    name = "compressed"

    def __init__(self, geo: ConvGeometry, rank: int) -> None:
        super().__init__()
        g = geo.groups
        (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
        self.geo, self.rank = geo, rank
        # Zero-padding that is symmetric goes into the convs; anything else is applied up front.
        self.pre_pad = not (geo.symmetric and geo.padding_mode == "zeros")
        ph, pw = (0, 0) if self.pre_pad else (geo.pad[0], geo.pad[2])
        self.vertical = nn.Conv2d(geo.cin, g * rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), groups=g, bias=False)
        self.horizontal = nn.Conv2d(g * rank, geo.cout, (1, kw), (1, sw), (0, pw), (1, dw), groups=g, bias=False)

    @classmethod
    def unsupported_reason(cls, conv: nn.Conv2d, config: DeltaConfig) -> str | None:
        geo = ConvGeometry.of(conv)
        student = cls(geo, bottleneck_width(geo, config))
        mine, teacher = student.macs(NOMINAL_HW), geo.macs(NOMINAL_HW)
        if mine >= teacher:
            return f"kernel split is not cheaper ({mine / teacher:.2f}x the teacher's MACs)"
        return None

    @classmethod
    def from_teacher(cls, conv: nn.Conv2d, config: DeltaConfig, rank: int | None = None,
                     cov: Tensor | None = None) -> CompressedStudent:
        """The split of ``conv`` at ``rank`` (default: the config's bottleneck width).

        With ``cov``, the covariance of the layer's input deltas as `split_spectrum` takes it, the
        split keeps the directions that carry the most delta energy rather than the weights' own.
        """
        geo = ConvGeometry.of(conv)
        student = cls(geo, rank if rank is not None else bottleneck_width(geo, config))
        student.init_from_svd(conv.weight.detach(), cov)
        return student

    @classmethod
    def from_spec(cls, conv: nn.Conv2d, config: DeltaConfig, spec: dict[str, Any]) -> CompressedStudent:
        return cls.from_teacher(conv, config, rank=spec.get("rank"))

    def spec(self) -> dict[str, Any]:
        return {"rank": self.rank}

    @torch.no_grad()
    def init_from_svd(self, weight: Tensor, cov: Tensor | None = None) -> None:
        """Truncated SVD of each group's ``(Cin*kh) x (Cout*kw)`` weight matrix, optionally whitened."""
        r = self.rank
        a, b, _ = split_spectrum(weight, self.geo.groups, cov)
        cout, cin_g, kh, kw = weight.shape
        g = self.geo.groups
        cout_g = cout // g
        v = a[:, :, :r].transpose(1, 2).reshape(g * r, cin_g, kh, 1)
        h = b[:, :r].reshape(g, r, cout_g, kw).permute(0, 2, 1, 3).reshape(cout, r, 1, kw)
        self.vertical.weight.copy_(v.to(weight.dtype))
        self.horizontal.weight.copy_(h.to(weight.dtype))

    def forward(self, delta: Tensor) -> Tensor:
        if self.pre_pad:
            delta = explicit_pad(delta, self.geo.pad, self.geo.padding_mode)
        return self.horizontal(self.vertical(delta))

    def macs(self, in_hw: tuple[int, int]) -> int:
        t, b, left, r = self.geo.pad
        h_in, w_in = in_hw
        if self.pre_pad:
            h_in, w_in = h_in + t + b, w_in + left + r
        v_geo = ConvGeometry.of(self.vertical)
        mid = v_geo.out_hw((h_in, w_in))
        return v_geo.macs((h_in, w_in)) + ConvGeometry.of(self.horizontal).macs(mid)


@register_student
class ZeroStudent(Student):
    """Predicts no change: the layer reuses its keyframe output. Free, and exact where features are static.

    Offered to the gate as the cheapest candidate; layers whose deltas matter little to the task
    (typically late, low-resolution ones) can take it.
    """

    name = "zero"
    is_zero = True
    feature_form = False

    def __init__(self, geo: ConvGeometry) -> None:
        super().__init__()
        self.geo = geo

    @classmethod
    def from_teacher(cls, conv: nn.Conv2d, config: DeltaConfig) -> ZeroStudent:
        return cls(ConvGeometry.of(conv))

    def forward(self, delta: Tensor) -> Tensor:
        ho, wo = self.geo.out_hw((delta.shape[-2], delta.shape[-1]))
        return delta.new_zeros(delta.shape[0], self.geo.cout, ho, wo)

    def macs(self, in_hw: tuple[int, int]) -> int:
        return 0


@register_student
class PooledStudent(Student):
    """The teacher conv run on a 2x average-pooled delta, then upsampled back: a quarter of the MACs.

    Deltas are smooth where motion is small, so halving their resolution loses little. Pooling
    and nearest upsampling are linear, so the student stays linear. Meant above all for depthwise
    convs, where the kernel split saves little. Pooling and upsampling are not counted as MACs.
    """

    name = "pooled"

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.geo = ConvGeometry.of(conv)
        self.conv = conv

    @classmethod
    def unsupported_reason(cls, conv: nn.Conv2d, config: DeltaConfig) -> str | None:
        if isinstance(conv.padding, str) and conv.padding == "same" and any(s > 1 for s in conv.stride):
            return "padding='same' with stride"
        return None

    @classmethod
    def from_teacher(cls, conv: nn.Conv2d, config: DeltaConfig) -> PooledStudent:
        return cls(FullStudent.from_teacher(conv, config).conv)

    def forward(self, delta: Tensor) -> Tensor:
        out_hw = self.geo.out_hw((delta.shape[-2], delta.shape[-1]))
        y = self.conv(nn.functional.avg_pool2d(delta, 2, ceil_mode=True))
        return nn.functional.interpolate(y, size=out_hw, mode="nearest")

    def macs(self, in_hw: tuple[int, int]) -> int:
        return self.geo.macs(((in_hw[0] + 1) // 2, (in_hw[1] + 1) // 2))


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def pixel_scores(delta: Tensor, weights: Tensor | None = None) -> Tensor:
    """How much each pixel moved: mean ``|delta|`` over channels, (B, 1, H, W).

    With ``weights`` (Cin,), summing to 1, a weighted mean instead: weighting each channel by the
    norm of the teacher weights it feeds makes the score track how much the pixel moves the output.
    """
    if weights is None:
        return delta.abs().mean(1, keepdim=True)
    return torch.einsum("bchw,c->bhw", delta.abs(), weights.to(delta.dtype)).unsqueeze(1)


def channel_weights(conv: nn.Conv2d) -> Tensor:
    """Per input channel, the norm of the teacher weights it feeds, normalised to sum to 1."""
    w = conv.weight.detach()
    cout, cin_g = w.shape[:2]
    groups = conv.groups
    norms = w.reshape(groups, cout // groups, cin_g, -1).pow(2).sum((1, 3)).sqrt().reshape(-1)  # (Cin,)
    return norms / norms.sum().clamp_min(1e-12)


def computed_share(mask: Tensor, geo: ConvGeometry) -> Tensor:
    """Per image, the share of output pixels whose receptive field holds a pixel of ``mask`` (B, 1, H, W).

    Those are the outputs a sparse conv must compute; the rest keep the keyframe's value.
    """
    (kh, kw), (sh, sw) = geo.kernel, geo.stride
    m = mask.to(torch.float32)
    if (kh, kw, sh, sw) != (1, 1, 1, 1):
        t, b, left, r = geo.pad
        m = F.max_pool2d(F.pad(m, (left, r, t, b)), (kh, kw), (sh, sw), dilation=geo.dilation)
    return m.mean((1, 2, 3))


@register_student
class SparseStudent(Student):
    """The teacher's own weights applied only where the input moved: pixels whose mean ``|delta|``
    over channels exceeds ``threshold``; every other pixel's delta counts as zero.

    Why: low-rank students lose a share of *every* pixel's delta, and across tens of layers those
    losses multiply (BENCHMARKS.md note 8). This one is exact where it computes and drops only small
    changes, so its error does not compound the same way (DeltaCNN and Skip-Convolutions rest on the
    same idea; ResQ on the related one of quantised residuals). Its cost is the share of output
    pixels whose receptive field saw a moving pixel, times the dense MACs: measured on every call
    (`measured_macs`); ``density`` holds the share that calibration expected, for `macs`.

    Not linear (the mask depends on the delta), so deploy keeps ``x_k`` and ``z_k`` for it. A
    threshold of 0 is the `full` student, exactly, wherever any channel moved.
    """

    name = "sparse"
    linear = False
    data_dependent = True
    keeps_ends_dense = False
    feature_form = False

    def __init__(self, conv: nn.Conv2d, threshold: float = 0.0, density: float = 1.0, weighted: bool = False) -> None:
        super().__init__()
        self.conv = conv
        self.geo = ConvGeometry.of(conv)
        self.weighted = weighted
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.register_buffer("density", torch.tensor(float(density), dtype=torch.float64))
        self.register_buffer("weights", channel_weights(conv) if weighted else torch.empty(0))

    @classmethod
    def from_teacher(cls, conv: nn.Conv2d, config: DeltaConfig, threshold: float = 0.0,
                     density: float = 1.0, weighted: bool = False) -> SparseStudent:
        return cls(FullStudent.from_teacher(conv, config).conv, threshold, density, weighted)

    @classmethod
    def from_spec(cls, conv: nn.Conv2d, config: DeltaConfig, spec: dict[str, Any]) -> SparseStudent:
        return cls.from_teacher(conv, config, weighted=bool(spec.get("weighted", False)))

    def spec(self) -> dict[str, Any]:
        return {"weighted": True} if self.weighted else {}

    #: set per frame by a rate controller (`rate.RateControl`), never saved: a multiplier on the
    #: calibrated threshold, or the share of pixels (elements) to keep, the largest scores first
    threshold_scale: float = 1.0
    keep: float | None = None

    def score(self, delta: Tensor) -> Tensor:
        """Per pixel, what the threshold is compared with (see `pixel_scores`)."""
        return pixel_scores(delta, self.weights if self.weighted else None)

    def select(self, score: Tensor) -> Tensor:
        """Which scores to compute: above the (scaled) threshold, or the ``keep`` share with the largest."""
        if self.keep is None:  # (no multiply at scale 1: an exported graph stays as it was)
            return score > (self.threshold if self.threshold_scale == 1.0 else self.threshold * self.threshold_scale)
        flat = score.flatten(1)
        k = max(1, min(flat.shape[1], round(self.keep * flat.shape[1])))
        kth = flat.topk(k, dim=1, sorted=False).values.amin(1)
        return (score >= kth.view(-1, *[1] * (score.dim() - 1))) & (score > 0)

    def macs_of(self, mask: Tensor, delta: Tensor) -> int:
        """What computing the pixels of ``mask`` costs: every output whose receptive field holds one."""
        return round(float(computed_share(mask, self.geo).mean()) * self.geo.macs((delta.shape[-2], delta.shape[-1])))

    def forward(self, delta: Tensor) -> Tensor:
        score = self.score(delta)
        mask = self.select(score)
        if not _tracing():  # a traced graph (ONNX export, torch.compile) has no Python side to record into
            self.__dict__["last_macs"] = self.macs_of(mask, delta)
            if self.keep is not None:  # the share the calibrated threshold would compute: when to re-key
                dense = max(1, self.geo.macs((delta.shape[-2], delta.shape[-1])))
                self.__dict__["wanted_share"] = self.macs_of(score > self.threshold, delta) / dense
        sent = delta * mask.to(delta.dtype)
        self.__dict__["last_sent"] = sent
        return self.conv(sent)

    def macs(self, in_hw: tuple[int, int]) -> int:
        return round(float(self.density) * self.geo.macs(in_hw))


@register_student
class RunningSparseStudent(SparseStudent):
    """`SparseStudent` with a reference that moves: per pixel, the input the conv last used.

    Why: measured against the keyframe, a pixel that moved once keeps being recomputed on every
    frame up to the next keyframe. Here, as in DeltaCNN's accumulated buffers, the layer adds what
    it computed to its stored input and output (``x_ref += sent``, ``z_ref += W sent``), so a delta
    frame pays only for the pixels that moved since they were last computed, and each pixel's input
    stays within the threshold of the truth, as with the keyframe reference. The keyframe still
    resets both exactly.
    """

    name = "sparse_running"
    running = True

    def sent(self) -> Tensor:
        """The part of the last delta this student computed (what the reference must move by)."""
        return self.__dict__["last_sent"]


def element_macs(mask: Tensor, geo: ConvGeometry) -> Tensor:
    """Per image, the MACs of ``geo``'s conv applied to an input whose nonzeros are ``mask`` (B,).

    Each nonzero input element is multiplied by every weight that reaches an output from it: per
    output position, the nonzeros in its window, times the outputs per group. Scaled so that an
    input with no zeros costs the dense conv's MACs, which count the padding too: ratios against
    the teacher's MACs then compare like with like.
    """
    count = mask.to(torch.float32).sum(1, keepdim=True)
    t, b, left, r = geo.pad

    def reach(c: Tensor) -> Tensor:  # window sums by unfold: bookkeeping, not arithmetic a MAC counter sees
        cols = F.unfold(F.pad(c, (left, r, t, b)), geo.kernel, dilation=geo.dilation, stride=geo.stride)
        return cols.sum((1, 2))

    exact = reach(count) * (geo.cout // geo.groups)
    full = float(reach(torch.full_like(count[:1], geo.cin))) * (geo.cout // geo.groups)
    return exact * (geo.macs((mask.shape[-2], mask.shape[-1])) / full)


@register_student
class ElementSparseStudent(SparseStudent):
    """`SparseStudent` that drops single delta *elements* (one channel at one pixel) whose ``|delta|``
    is at most ``threshold``, not whole pixels: the sparsity of Event Neural Networks and of ResQ's
    quantised residuals. Costs the MACs a sparse conv needs for the nonzeros left (`element_macs`);
    a dense runtime does not see that saving (see BENCHMARKS.md).
    """

    name = "sparse_element"

    def score(self, delta: Tensor) -> Tensor:
        """Per element: the threshold is compared with each ``|delta|`` itself."""
        return delta.abs()

    def macs_of(self, mask: Tensor, delta: Tensor) -> int:
        return round(float(element_macs(mask, self.geo).mean()))


@register_student
class RunningElementSparseStudent(ElementSparseStudent):
    """`ElementSparseStudent` with the moving reference of `RunningSparseStudent`."""

    name = "sparse_element_running"
    running = True

    def sent(self) -> Tensor:
        return self.__dict__["last_sent"]
