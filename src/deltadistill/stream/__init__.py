"""Running frames: `DeltaStream` (a converted model over a stream, with its cached keyframe state), the
keyframe policies that choose which frames run the whole teacher, and `RateControl`, the policy that
holds a cost target."""

from .delta import DeltaStream
from .policies import EveryK, KeyframePolicy, SceneCut, frame_change, keyframe_flags
from .rate import RateControl

__all__ = ["DeltaStream", "EveryK", "KeyframePolicy", "RateControl", "SceneCut", "frame_change", "keyframe_flags"]
