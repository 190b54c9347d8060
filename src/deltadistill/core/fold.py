"""Fold eval-mode BatchNorm into the conv before it, teacher and deployed student alike.

``BN(z_k + g(d)) = a*z_k + b + a*g(d)``: scaling the teacher conv and the student's output
channels by ``a`` gives the same numbers with one pass over the feature map fewer per layer.
"""

from __future__ import annotations

import logging

import torch
from torch import fx, nn

from .layer import DeltaLayer, DeployedDeltaConv2d

log = logging.getLogger(__name__)


class _LeafTracer(fx.Tracer):
    """Treat delta layers as opaque calls, as they are for BN folding."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, DeltaLayer) or super().is_leaf_module(m, qualname)


@torch.no_grad()
def _fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0) - a * bn.running_mean
    conv.weight.mul_(a.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    conv.bias = nn.Parameter(bias * a + shift, requires_grad=False)
    return a


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BN that is the only consumer of a conv or deployed delta layer; returns how many.

    Models fx cannot trace are left as they are (logged), which is correct, only slower.
    """
    try:
        graph = _LeafTracer().trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure just means no folding
        log.info("BN folding skipped: model is not fx-traceable (%s)", e)
        return 0
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = 0
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or bn.training or calls[node.target] != 1:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1 or calls[src.target] != 1:
            continue
        producer = modules[src.target]
        if isinstance(producer, DeployedDeltaConv2d):
            a = _fold_into_conv(producer.base, bn)
            producer.student.scale_output_(a)
        elif type(producer) is nn.Conv2d:
            _fold_into_conv(producer, bn)
        else:
            continue
        parent, _, child = node.target.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
        folded += 1
    return folded
