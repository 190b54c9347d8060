"""The one error type for unreadable video: it names the file and what is wrong with it."""


class VideoError(ValueError):
    """A video that is missing, empty, corrupt or has no video stream."""


class VideoWarning(UserWarning):
    """A video that is readable only in part: cut off or damaged after some good frames."""
