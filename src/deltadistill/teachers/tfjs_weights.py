"""Read the ``weightsManifest`` + binary shards of a TF.js graph model into numpy arrays.

Supports the formats the TF.js converter writes: float32/int32/bool weights, float16 storage, and
affine ``uint8``/``uint16`` quantization (``value = q * scale + min``) or ``float16`` quantization.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int32": np.dtype("<i4"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "bool": np.dtype("u1"),
}


def _decode_one(spec: dict[str, Any], buf: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """Decode one weight starting at ``offset``; return (array, next offset)."""
    shape = [int(s) for s in spec.get("shape", [])]
    count = int(np.prod(shape)) if shape else 1
    dtype = spec["dtype"]
    quant = spec.get("quantization")
    stored = _DTYPES[quant["dtype"]] if quant else _DTYPES.get(dtype)
    if stored is None:
        raise ValueError(f"weight {spec['name']!r}: unsupported dtype {dtype!r}")
    nbytes = count * stored.itemsize
    raw = np.frombuffer(buf[offset : offset + nbytes], dtype=stored, count=count)
    if quant and quant["dtype"] in ("uint8", "uint16"):
        arr = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
    elif dtype == "bool":
        arr = raw.astype(bool)
    elif dtype == "float32" or dtype == "float16":
        arr = raw.astype(np.float32)
    else:
        arr = raw.astype(_DTYPES[dtype])
    return arr.reshape(shape), offset + nbytes


def load_weights(model_json: str | Path, manifest: list[dict[str, Any]] | None = None) -> dict[str, np.ndarray]:
    """Return ``{weight name: array}`` for all weights of the graph model at ``model_json``.

    Shard paths are resolved relative to the JSON file; each manifest group is one contiguous buffer.
    """
    model_json = Path(model_json)
    if manifest is None:
        manifest = json.loads(model_json.read_text())["weightsManifest"]
    out: dict[str, np.ndarray] = {}
    for group in manifest:
        data = b"".join((model_json.parent / p).read_bytes() for p in group["paths"])
        buf = memoryview(data)
        offset = 0
        for spec in group["weights"]:
            out[spec["name"]], offset = _decode_one(spec, buf, offset)
        if offset != len(data):
            raise ValueError(f"{model_json}: manifest describes {offset} bytes, shards hold {len(data)}")
    return out
