"""count_macs agrees with FlopCounterMode on the frames the model actually runs."""

from __future__ import annotations

import pytest
import torch

import deltadistill as dd
from deltadistill.core.macs import flop_counter_macs
from deltadistill.models import ResNetLike, TinySegNet
from tests.conftest import make_video


def measured_frame_macs(model: torch.nn.Module, frames: list[torch.Tensor], interval: int) -> list[int]:
    stream = dd.DeltaStream(model, interval)
    out = []
    for x in frames:
        out.append(flop_counter_macs(stream, x))
    return out


@pytest.mark.parametrize("deployed", [False, True])
@pytest.mark.parametrize("candidates", [("compressed", "full"), ("zero", "pooled", "compressed", "full")])
def test_count_macs_matches_flop_counter(deployed: bool, candidates: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    model = TinySegNet().eval()
    teacher = flop_counter_macs(model, torch.zeros(1, 3, 48, 48))
    dd.convert(model, dd.DeltaConfig(student="search", candidates=candidates))
    for m in model.modules():
        if isinstance(m, dd.DeltaConv2d):
            m.gate.logits.data.normal_()
    if deployed:
        dd.deploy(model)
    report = dd.count_macs(model, (3, 48, 48), keyframe_interval=3)
    assert report.teacher == teacher
    frames = measured_frame_macs(model, make_video(frames=4), 3)
    assert frames[0] == report.keyframe and frames[3] == report.keyframe
    assert frames[1] == frames[2] == report.delta
    assert report.amortised == pytest.approx((report.keyframe + 2 * report.delta) / 3)
    if deployed:  # the keyframe pays once for c = z_k - g(x_k)
        assert report.keyframe == report.teacher + sum(r.delta for r in report.layers)
    else:
        assert report.keyframe == report.teacher


def test_resnet_like_delta_frame_is_well_under_teacher() -> None:
    model = ResNetLike().eval()
    dd.convert(model, dd.DeltaConfig(student="compressed", reduction=4))
    report = dd.count_macs(model, (3, 224, 224), keyframe_interval=8)
    print(f"ResNet-18-like @224: teacher {report.teacher / 1e9:.2f} GMAC, delta frame "
          f"{report.delta / 1e9:.2f} GMAC ({report.delta_ratio:.1%}), amortised@8 {report.ratio:.2f}x fewer")
    assert report.delta_ratio < 0.3
    assert report.ratio > 2.5


def test_summary_lists_converted_and_skipped_with_macs(tiny: TinySegNet) -> None:
    dd.convert(tiny, dd.DeltaConfig())
    text = dd.summary(tiny, (3, 32, 32))
    assert "stem" in text and "first/last conv" in text and "converted" in text and "GMAC/frame" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    # block1.conv1: 16->32, 3x3, stride 2 on the stem's 16x16 output -> 8x8: 32*16*9*64 = 294,912 MACs
    assert "0.3->" in lines["block1.conv1"]
    # same: 32->32, 3x5 on 8x8: 32*32*15*64 = 983,040 MACs
    assert "1.0->" in lines["same"]
    report = dd.count_macs(tiny, (3, 32, 32))
    assert f"({report.ratio:.2f}x fewer)" in text and report.layers[0].teacher == 294_912


def test_bytes_moved_count_every_op_once_and_views_not_at_all() -> None:
    from deltadistill.measure.traffic import measure_traffic

    conv = torch.nn.Conv2d(4, 8, 1)
    model = dd.deploy(dd.convert(torch.nn.Sequential(conv), dd.DeltaConfig(student="full", targets=["0"])))
    x = torch.randn(1, 4, 6, 6)
    f = 4  # bytes per float32
    x_b, w_b, b_b, out_b = 4 * 36 * f, 8 * 4 * f, 8 * f, 8 * 36 * f
    tr = measure_traffic(model, x, x + 1, keyframe_interval=4)
    assert tr.teacher == x_b + w_b + b_b + out_b  # one conv: reads input, weight, bias; writes output
    # a delta frame of a linear student: g(x_t) (no bias) then one add of c: read g(x_t) and c, write the sum
    assert tr.delta == (x_b + w_b + out_b) + 3 * out_b
    assert tr.speedup_bound == pytest.approx(tr.teacher / ((tr.keyframe + 3 * tr.delta) / 4))
