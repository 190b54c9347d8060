"""Optional dependencies (``pip install 'deltadistill[onnx]'``): checked before the work that needs them.

`require` imports a module, or raises `MissingExtraError`: one line that names the module, what
needed it, and the extra that installs it. The command line prints it and exits with code 2.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType

#: module -> the extra (``[project.optional-dependencies]``) that installs it
EXTRAS = {"onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "onnx", "openvino": "openvino"}

#: what ``torch.onnx.export(dynamo=True)`` imports: `deltadistill export` and every export on the way
EXPORT = ("onnx", "onnxscript")
#: what running an export needs
ONNXRUNTIME = ("onnxruntime",)


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed. An ImportError, and a ValueError so that the command
    line reports it as the one-line bad-input error it is."""


def install_hint(module: str) -> str:
    extra = EXTRAS.get(module)
    return f"pip install 'deltadistill[{extra}]'" if extra else f"pip install {module}"


def require(module: str, feature: str) -> ModuleType:
    """``import module``, or `MissingExtraError` ``"<feature> needs <module>: pip install ..."``."""
    return require_all((module,), feature)[0]


def require_all(modules: Iterable[str], feature: str) -> list[ModuleType]:
    """Import every one of ``modules``; if any is missing, one `MissingExtraError` naming all that are."""
    found, missing = [], []
    for name in modules:
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        hints = dict.fromkeys(install_hint(m) for m in missing)
        raise MissingExtraError(f"{feature} needs {', '.join(missing)}: {'; '.join(hints)}", name=missing[0])
    return found
