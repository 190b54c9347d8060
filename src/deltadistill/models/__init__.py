"""Small built-in networks in plain PyTorch, for tests, examples and the quick demo."""

from .toy import ResNetLike, TinySegNet

__all__ = ["ResNetLike", "TinySegNet"]
