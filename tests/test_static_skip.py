"""A TF.js graph skips, on delta frames, whatever feeds only zero-student layers: same numbers, less work."""

from __future__ import annotations

import copy

import torch

import deltadistill as dd
from deltadistill import teachers


def test_skipping_static_subgraphs_changes_no_output() -> None:
    teacher = teachers.load("selfie")
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(candidates=("zero", "pooled", "compressed", "full")))
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, dd.DeltaConv2d):
            logits = torch.randn(len(m.student_names), generator=g)
            logits[m.student_names.index("zero")] += 1.0
            m.gate.logits.data.copy_(logits)
    dd.deploy(model)
    zero = [m for m in model.modules() if isinstance(m, dd.DeployedDeltaConv2d) and m.student.is_zero]
    assert len(zero) > 5
    frames = [torch.rand(1, 3, 256, 256, generator=g) for _ in range(7)]
    calls = {"n": 0}
    hooks = [m.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
             for m in model.modules() if isinstance(m, dd.DeployedDeltaConv2d)]
    fast = dd.DeltaStream(model, 3)
    got, fast_calls = [], []
    for f in frames:
        calls["n"] = 0
        got.append(fast(f))
        fast_calls.append(calls["n"])
    for h in hooks:
        h.remove()
    model.graph.supports_stream_state = False  # the plain executor: every step, every frame
    slow = dd.DeltaStream(model, 3)
    for f, want in zip(frames, got, strict=True):
        assert torch.equal(slow(f), want)
    n_layers = sum(isinstance(m, dd.DeployedDeltaConv2d) for m in model.modules())
    assert fast_calls[0] == n_layers and fast_calls[3] == n_layers  # keyframes run everything
    assert max(fast_calls[1], fast_calls[2]) <= n_layers - len(zero)  # delta frames skip the frozen layers
