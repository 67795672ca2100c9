"""The Open Inference Protocol (KServe V2) wire format: inference requests in, responses out, as data.

A request body is JSON, or JSON followed by raw tensor bytes (the binary tensor data extension: the
``Inference-Header-Content-Length`` header gives the JSON's length, each binary input says its
``binary_data_size``). BYTES elements travel as 4-byte little-endian length + bytes when binary, as strings
(base64 for images, KServe's convention) in JSON. Written here because the codec of KServe's and Triton's
servers lives inside their whole server packages; tritonclient has only the client side.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import HTTPException

DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
          "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
          "FP32": np.float32, "FP64": np.float64}
HEADER = "inference-header-content-length"


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: dict[str, bool] | None  # requested output -> binary; None = all
    binary_output: bool  # request parameter binary_data_output


def bad(message: str) -> HTTPException:
    return HTTPException(400, message)


def _header(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise bad(f"Inference-Header-Content-Length must be an integer <= the body's {len(body)} bytes, "
                      f"got {header_length!r}")
        n = int(header_length)
        head, rest = body[:n], body[n:]
    else:
        head, rest = body, b""
    try:
        obj = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"the inference request is not valid JSON ({e.__class__.__name__}: {e}); binary tensors need "
                  "the Inference-Header-Content-Length header") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("inputs"), list) or not obj["inputs"]:
        raise bad('expected a JSON object with a non-empty "inputs" list, e.g. {"inputs": [{"name": "image", '
                  '"shape": [1, 1, 28, 28], "datatype": "FP32", "data": [...]}]}')
    return obj, rest


def _shape(spec: dict, max_elements: int) -> list[int]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise bad(f"input {spec.get('name')!r}: shape must be a list of non-negative integers, got {shape!r}")
    if int(np.prod(shape, dtype=np.int64)) > max_elements:
        raise bad(f"input {spec.get('name')!r}: shape {shape} holds more than {max_elements} elements")
    return shape


def split_bytes(raw: bytes, name: str) -> list[bytes]:
    """BYTES elements from their binary form: 4-byte little-endian length, then the bytes, repeated."""
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise bad(f"input {name!r}: truncated BYTES element length at byte {i}")
        (n,) = struct.unpack_from("<I", raw, i)
        if i + 4 + n > len(raw):
            raise bad(f"input {name!r}: a BYTES element declares {n} bytes, {len(raw) - i - 4} remain")
        out.append(raw[i + 4 : i + 4 + n])
        i += 4 + n
    return out


def join_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _json_bytes(data: Any, name: str) -> list[bytes]:
    flat = data if isinstance(data, list) else [data]
    flat = [x for x in np.asarray(flat, dtype=object).ravel()]
    out = []
    for x in flat:
        if isinstance(x, dict) and "b64" in x:  # {"b64": "..."} as some KServe examples send
            x = x["b64"]
        if not isinstance(x, str):
            raise bad(f"input {name!r}: BYTES data in JSON must be base64 strings, got {type(x).__name__}")
        try:
            out.append(base64.b64decode(x, validate=True))
        except (binascii.Error, ValueError):
            raise bad(f"input {name!r}: BYTES data in JSON must be base64-encoded images") from None
    return out


def _tensor(spec: dict, rest: bytes, offset: int, max_elements: int) -> tuple[Tensor, int]:
    name, dtype = spec.get("name"), spec.get("datatype")
    if not isinstance(name, str) or not name:
        raise bad('every input needs a "name"')
    if dtype != "BYTES" and dtype not in DTYPES:
        raise bad(f"input {name!r}: datatype must be one of BYTES, {', '.join(DTYPES)}, got {dtype!r}")
    shape, params = _shape(spec, max_elements), spec.get("parameters") or {}
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(rest):
            raise bad(f"input {name!r}: binary_data_size {size!r} does not fit the {len(rest) - offset} bytes left")
        raw = rest[offset : offset + size]
        if dtype == "BYTES":
            data: np.ndarray | list[bytes] = split_bytes(raw, name)
        else:
            itemsize = np.dtype(DTYPES[dtype]).itemsize
            if len(raw) != int(np.prod(shape, dtype=np.int64)) * itemsize:
                raise bad(f"input {name!r}: {len(raw)} bytes of {dtype} do not make shape {shape}")
            data = np.frombuffer(raw, dtype=DTYPES[dtype]).reshape(shape)
        return Tensor(name, dtype, shape, data, params), offset + size
    if "data" not in spec:
        raise bad(f'input {name!r}: needs "data" or parameters.binary_data_size')
    if dtype == "BYTES":
        return Tensor(name, dtype, shape, _json_bytes(spec["data"], name), params), offset
    try:
        arr = np.asarray(spec["data"], dtype=DTYPES[dtype])
        return Tensor(name, dtype, shape, arr.reshape(shape), params), offset
    except (ValueError, TypeError):
        raise bad(f"input {name!r}: data does not hold {int(np.prod(shape))} {dtype} values of shape {shape}") from None


def parse_infer_request(body: bytes, header_length: str | None, *, max_elements: int) -> InferRequest:
    """An inference request from its body; 400 with one line for anything malformed."""
    obj, rest = _header(body, header_length)
    inputs, offset = [], 0
    for spec in obj["inputs"]:
        if not isinstance(spec, dict):
            raise bad("every input must be a JSON object with name, shape, datatype and data")
        t, offset = _tensor(spec, rest, offset, max_elements)
        inputs.append(t)
    if offset != len(rest):
        raise bad(f"{len(rest) - offset} bytes after the binary inputs that no input claims")
    params = obj.get("parameters") or {}
    outputs = None
    if isinstance(obj.get("outputs"), list):
        outputs = {o.get("name"): bool((o.get("parameters") or {}).get("binary_data", False))
                   for o in obj["outputs"] if isinstance(o, dict)}
    rid = obj.get("id")
    return InferRequest(None if rid is None else str(rid), inputs, outputs,
                        bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False)


def encode_infer_response(model: str, version: str, request: InferRequest,
                          outputs: list[Tensor]) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, with binary outputs appended where the request asked."""
    head: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": []}
    if request.id is not None:
        head["id"] = request.id
    blobs = []
    for t in outputs:
        binary = request.outputs.get(t.name, False) if request.outputs is not None else request.binary_output
        out: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if binary:
            raw = join_bytes(t.data) if t.datatype == "BYTES" else np.ascontiguousarray(t.data).tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            out["data"] = ([b.decode() for b in t.data] if t.datatype == "BYTES"
                           else np.asarray(t.data).ravel().tolist())
        head["outputs"].append(out)
    text = json.dumps(head, separators=(",", ":"), allow_nan=True).encode()
    if not blobs:
        return text, {"content-type": "application/json"}
    return text + b"".join(blobs), {"content-type": "application/octet-stream", HEADER: str(len(text))}
