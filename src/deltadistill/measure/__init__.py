"""What a model costs and what it recovers: the conversion summary, bytes moved per frame, the share
of the output's change recovered, the free rival (the keyframe repeated), and long soak runs."""

from .rival import margin_needed, rival_equal_macs
from .summary import summary

__all__ = ["margin_needed", "rival_equal_macs", "summary"]
