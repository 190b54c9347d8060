"""`deploy(model)`: freeze each gate to its hard choice and drop everything else."""

from __future__ import annotations

from torch import nn

from .convert import _replace
from .fold import fold_batchnorm
from .layer import DeltaConv2d, DeployedDeltaConv2d
from .modes import delta_layers


def deploy(model: nn.Module, fold_bn: bool = True) -> nn.Module:
    """Turn every `DeltaConv2d` into a `DeployedDeltaConv2d` holding only its chosen student.

    In place; returns the model in eval mode with gradients off. With ``fold_bn``, eval-mode
    BatchNorm that directly follows a conv is folded into teacher and student. Its stream outputs
    match the undeployed model's to float tolerance.
    """
    layers = [(n, m) for n, m in delta_layers(model) if isinstance(m, DeltaConv2d)]
    if not layers:
        raise ValueError("nothing to deploy: the model has no trainable delta layers")
    for name, layer in layers:
        choice = layer.chosen()
        new = DeployedDeltaConv2d(layer.base, layer.students[choice], choice, layer.objective)
        new.mode, new.in_hw = layer.mode, layer.in_hw
        _replace(model, name, new)
    model.eval().requires_grad_(False)
    model.delta_bn_folded = fold_batchnorm(model) if fold_bn else 0
    return model
