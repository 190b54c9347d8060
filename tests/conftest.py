"""Shared fixtures: small real networks and short synthetic 'videos' with genuine frame-to-frame change."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import deltadistill` sets it, before torch loads

import pytest  # noqa: E402
import torch  # noqa: E402

from deltadistill.models import TinySegNet  # noqa: E402


def free_port() -> int:
    """A TCP port free on this host now, for a torchrun rendezvous: two test processes run at once, and
    two torchrun tests on one fixed port collided (EADDRINUSE)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_video(frames: int = 6, batch: int = 1, size: int = 48, seed: int = 0) -> list[torch.Tensor]:
    """A smooth random image drifting a little per frame, as in real video."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, 3, size, size, generator=g)
    out, cur = [], base
    for _ in range(frames):
        out.append(cur.clone())
        cur = cur + 0.15 * torch.randn(batch, 3, size, size, generator=g)
    return out


@pytest.fixture
def video() -> list[torch.Tensor]:
    return make_video()


def trained_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Give BN layers non-trivial statistics so that BN really shifts and scales."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model.eval()


@pytest.fixture
def tiny() -> TinySegNet:
    torch.manual_seed(0)
    return trained_bn(TinySegNet())
