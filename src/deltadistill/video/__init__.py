"""Video in and out: PyAV frame reading, training clips, mp4 writing with drawn predictions."""

from .clips import VideoClips
from .errors import VideoError, VideoWarning
from .reader import (
           Letterbox,
           VideoInfo,
           default_videos,
           fit_frame,
           frame_size,
           is_live,
           iter_frames,
           letterbox_share,
           video_info,
)
from .writer import BACKGROUNDS, VideoWriter, cutout, draw_boxes, overlay_mask, side_by_side

__all__ = ["BACKGROUNDS", "Letterbox", "VideoClips", "VideoError", "VideoInfo", "VideoWarning", "VideoWriter", "cutout", "default_videos", "draw_boxes",
           "fit_frame", "frame_size", "is_live", "iter_frames", "letterbox_share", "overlay_mask", "side_by_side", "video_info"]
