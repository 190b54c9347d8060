"""A readable account of a conversion: what was converted, what was skipped and why, at what MACs."""

from __future__ import annotations

from torch import nn

from ..core.macs import count_macs


def summary(model: nn.Module, input_shape: tuple[int, ...] | None = None, keyframe_interval: int = 4) -> str:
    """Table of every candidate layer; with ``input_shape``, each layer's teacher and delta MACs."""
    report = getattr(model, "delta_report", None)
    if report is None:
        raise ValueError("model was not converted with deltadistill.core.convert")
    macs = count_macs(model, input_shape, keyframe_interval) if input_shape else None
    per_layer = {r.name: r for r in macs.layers} if macs else {}
    lines = [f"{'layer':34s} {'kind':30s} {'status':10s} {'MMAC t->d':>16s}  notes"]
    for rec in report.layers:
        row = per_layer.get(rec.name)
        cost = f"{row.teacher / 1e6:7.1f}->{row.delta / 1e6:<7.1f}" if row else ""
        status = "converted" if rec.converted else "skipped"
        notes = ("students: " + ",".join(rec.students) + ("; " + rec.reason if rec.reason else "")
                 if rec.converted else rec.reason)
        lines.append(f"{rec.name[-34:]:34s} {rec.kind[:30]:30s} {status:10s} {cost:>16s}  {notes}")
    n_conv, n_skip = len(report.converted), len(report.skipped)
    lines.append(f"{n_conv} layers converted, {n_skip} skipped")
    if macs:
        lines.append(f"GMAC/frame: teacher {macs.teacher / 1e9:.3f}, keyframe {macs.keyframe / 1e9:.3f}, "
                     f"delta {macs.delta / 1e9:.3f}, amortised@K={keyframe_interval} {macs.amortised / 1e9:.3f} "
                     f"({macs.ratio:.2f}x fewer)")
    return "\n".join(lines)
