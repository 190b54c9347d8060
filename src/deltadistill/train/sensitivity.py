"""Output-aware costs: how much each layer's student error would move the model's *output*.

Why: a layer can keep 84% of its own delta and still wipe out the change at the output, because
the rest of the network amplifies its error (issue 9: one thin early 1x1 layer at rank 4 alone
recovers nothing of the heatmap's change, while SE, depthwise and head layers lose nothing). So
each candidate student is priced by its error *at the output*, to first order:

    out_err(layer, student) = E || J_l (W d - g(d)) ||^2

with ``J_l`` the Jacobian from the layer's output to the model's outputs at frame ``t`` and ``d``
the layer's real input delta. ``J_l^T r`` for random Gaussian ``r`` (one backward pass gives it
for every layer at once) makes ``<J_l^T r, e>^2`` an unbiased estimate of ``||J_l e||^2``; each
student's error ``e`` is then priced without running the network again:

- ``zero``: ``e = W d``; ``full``: ``e = 0``;
- ``compressed`` at every rank at once: per-direction projections of the full-rank split;
- ``sparse`` at every threshold at once: per-pixel contributions ``<W^T J^T r, d>``, summed over
  the pixels a threshold drops.

Outputs are weighted by one over the RMS of their own change between frames, so that the error
reads as a share of how much the output moved: 0 is the teacher, 1 is no better than repeating
the keyframe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..core.config import DeltaConfig
from ..core.geometry import ConvGeometry, explicit_pad
from ..core.layer import DeltaConv2d
from ..core.modes import delta_layers, mode
from ..core.students import CompressedStudent, computed_share, pixel_scores

#: Sparse thresholds tried per layer, as multiples of the layer's mean |input| on keyframes.
SPARSE_LEVELS = (0.0, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


@dataclass
class LayerSensitivity:
    """Summed output error of each option of one layer, over ``samples`` (frame, probe) pairs."""

    zero: float = 0.0
    ranks: Tensor | None = None  # (R,) error at rank 1..R of the (whitened) kernel split
    thresholds: Tensor | None = None  # (L,) absolute thresholds of the sparse student
    sparse: Tensor | None = None  # (L,) error at each threshold
    density: Tensor | None = None  # (L,) share of output pixels computed at each threshold (summed)
    density_samples: int = 0
    samples: int = 0
    split: CompressedStudent | None = field(default=None, repr=False)

    def mean(self, x: Tensor | float) -> Tensor | float:
        return x / max(self.samples, 1)


def _outputs(out: object) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, Tensor)]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _outputs(o)]
    return []


def output_sensitivity(model: nn.Module, clips: Sequence[Tensor], covs: dict[str, Tensor] | None = None,
                       probes: int = 2, with_compressed: bool = True, with_sparse: bool = True,
                       seed: int = 0, progress: bool = True) -> tuple[dict[str, LayerSensitivity], float]:
    """Per trainable delta layer, the output error of its candidate students; and the output's own
    change energy (the error of repeating the keyframe) on the same samples, per sample.

    ``clips``: (T >= 2, C, H, W), keyframe first; every later frame is one sample. ``covs``: the
    layers' input-delta covariances, to price the whitened kernel split `calibrate` would build.
    """
    layers = [(n, m) for n, m in delta_layers(model) if isinstance(m, DeltaConv2d)]
    if not layers:
        raise ValueError("model has no trainable delta layers: convert it with deltadistill.core.convert first")
    config = model.delta_report.config
    stats = {n: LayerSensitivity() for n, _ in layers}
    by_name = dict(layers)
    gen = torch.Generator().manual_seed(seed)
    change_energy, n_samples = 0.0, 0
    inputs: dict[str, Tensor] = {}
    outputs: dict[str, Tensor] = {}

    def pre(name: str):
        def fn(_m: nn.Module, args: tuple[Tensor, ...]) -> None:
            inputs[name] = args[0].detach()
        return fn

    def post(name: str):
        def fn(_m: nn.Module, _args: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
            if not out.requires_grad:
                return None
            outputs[name] = out
            return out.clone()  # later in-place ops (fused activations) must act on a copy, not on this
        return fn

    handles = [m.register_forward_pre_hook(pre(n)) for n, m in layers]
    handles += [m.register_forward_hook(post(n)) for n, m in layers]
    try:
        with mode(model, "teacher"):
            for clip in tqdm(clips, desc="calibrate: output sensitivity", disable=not progress):
                if clip.dim() != 4 or clip.shape[0] < 2:
                    raise ValueError(f"a calibration clip must be (T >= 2, C, H, W), got {tuple(clip.shape)}")
                with torch.no_grad():
                    key_out = [o.detach() for o in _outputs(model(clip[:1]))]
                key_in = dict(inputs)
                for t in range(1, clip.shape[0]):
                    outputs.clear()
                    x = clip[t:t + 1].clone().requires_grad_(True)
                    outs = _outputs(model(x))
                    scales = [1.0 / ((o.detach() - k).pow(2).mean().sqrt().clamp_min(1e-12)) for o, k in
                              zip(outs, key_out, strict=True)]
                    change_energy += sum(float(((o.detach() - k) * s).pow(2).sum())
                                         for o, k, s in zip(outs, key_out, scales, strict=True))
                    n_samples += 1
                    names = [n for n, _ in layers if n in outputs]
                    for p in range(probes):
                        r = [torch.randn(o.shape, generator=gen).to(o) * s for o, s in zip(outs, scales, strict=True)]
                        s_val = sum((o * ri).sum() for o, ri in zip(outs, r, strict=True))
                        grads = torch.autograd.grad(s_val, [outputs[n] for n in names], retain_graph=p < probes - 1,
                                                    allow_unused=True)
                        for n, v in zip(names, grads, strict=True):
                            if v is None:
                                continue
                            d = inputs[n] - key_in[n]
                            _accumulate(stats[n], by_name[n], d, v.detach(), key_in[n], config,
                                        covs.get(n) if covs else None, with_compressed, with_sparse, p == 0)
    finally:
        for h in handles:
            h.remove()
    return stats, change_energy / max(n_samples, 1)


@torch.no_grad()
def _accumulate(st: LayerSensitivity, layer: DeltaConv2d, d: Tensor, v: Tensor, xk: Tensor, config: DeltaConfig,
                cov: Tensor | None, with_compressed: bool, with_sparse: bool, first_probe: bool) -> None:
    """Add one (frame, probe) sample's output error of every option of ``layer`` to ``st``."""
    conv = layer.base
    geo = ConvGeometry.of(conv)
    st.samples += 1
    with torch.enable_grad():
        dd = d.detach().requires_grad_(True)
        full = layer.teacher_linear(dd)
        q = torch.autograd.grad((full * v).sum(), dd)[0]  # W^T v, shaped like d
    contrib = (q * d).sum(1, keepdim=True)  # per pixel: what its delta moves the probed output by
    total = contrib.sum()
    st.zero += float(total) ** 2
    if with_sparse:
        if st.thresholds is None:  # absolute thresholds, fixed from the first keyframe seen
            scale = float(xk.abs().mean())
            st.thresholds = torch.tensor(SPARSE_LEVELS, dtype=torch.float64) * scale
            st.sparse = torch.zeros(len(SPARSE_LEVELS), dtype=torch.float64)
            st.density = torch.zeros(len(SPARSE_LEVELS), dtype=torch.float64)
        score = pixel_scores(d)
        for i, tau in enumerate(st.thresholds.tolist()):
            keep = score > tau
            dropped = float(total - (contrib * keep).sum())
            st.sparse[i] += dropped ** 2
        if first_probe:  # the mask, and so the cost, is the same for every probe of a frame
            for i, tau in enumerate(st.thresholds.tolist()):
                st.density[i] += float(computed_share(score > tau, geo).mean())
            st.density_samples += 1
    if with_compressed:
        if st.split is None:
            r_full = min((geo.cin // geo.groups) * geo.kernel[0], (geo.cout // geo.groups) * geo.kernel[1])
            st.split = CompressedStudent.from_teacher(conv, config, rank=r_full, cov=cov).to(d)
        s = st.split
        x = explicit_pad(d, geo.pad, geo.padding_mode) if s.pre_pad else d
        with torch.enable_grad():
            u = s.vertical(x).detach().requires_grad_(True)
            y = s.horizontal(u)
            g = torch.autograd.grad((y * v).sum(), u)[0]
        per_dir = (u * g).sum((0, 2, 3)).double().view(geo.groups, -1)  # (G, R): each direction's share
        kept = per_dir.cumsum(1).sum(0)  # rank r keeps directions < r in every group
        err = (float(total) - kept).pow(2)
        st.ranks = err if st.ranks is None else st.ranks + err
