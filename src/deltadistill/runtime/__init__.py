"""Running delta models outside training: ONNX export, an onnxruntime stream, and the `run` job."""

from .export import ExportError, export_onnx, read_manifest

__all__ = ["ExportError", "export_onnx", "read_manifest"]
