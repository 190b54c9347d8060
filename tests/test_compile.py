"""`torch.compile` is an option of the stream: same outputs as eager, keyframes and delta frames alike."""

from __future__ import annotations

import copy

import torch

import deltadistill as dd

from .conftest import make_video, trained_bn


def test_compiled_stream_matches_eager(tiny: torch.nn.Module) -> None:
    torch._dynamo.reset()
    model = dd.convert(copy.deepcopy(trained_bn(tiny)), dd.DeltaConfig(reduction=2))
    dd.deploy(model)
    frames = make_video(frames=7, size=32, seed=5)
    eager, compiled = dd.DeltaStream(model, 3), dd.DeltaStream(model, 3, compile=True)
    keys = []
    for f in frames:
        want, got = eager(f), compiled(f)
        keys.append(bool(compiled.last_key))
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert keys == [True, False, False, True, False, False, True]
    compiled.reset()  # a fresh stream through the same compiled model starts from a keyframe again
    torch.testing.assert_close(compiled(frames[2]), dd.DeltaStream(model, 3)(frames[2]), atol=1e-4, rtol=1e-4)
