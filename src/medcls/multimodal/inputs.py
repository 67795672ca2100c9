"""The one place where metadata and text become model inputs (training, evaluation, export, Predictor, REST).

:class:`InputEncoder` is fitted on the training split (tabular state, see
:mod:`.tabular`; the tokenizer) and turns a DataFrame of rows, a table's
``meta`` or request dicts into the named arrays the fused model takes:
``numeric``, ``numeric_missing``, ``categorical``, ``input_ids``,
``attention_mask`` (each only when configured) and ``present`` (N, 2): whether the
metadata and the text of a row are known (0 = use the learned "missing" embedding).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import DataError, did_you_mean
from .tabular import TabularEncoder, check_columns

log = logging.getLogger("medcls")

SIDE_INPUT_NAMES = ("numeric", "numeric_missing", "categorical", "input_ids", "attention_mask", "present")
TEXT_DIR = "text_encoder"


class InputEncoder:
    """Fitted encoding of ``inputs`` (config section) for one run or bundle."""

    def __init__(self, tabular: TabularEncoder | None, *, text: str | None = None, text_encoder: str | None = None,
                 text_max_length: int = 128, tokenizer: Any = None) -> None:
        self.tabular = tabular if tabular is not None and tabular.columns else None
        self.text, self.text_encoder, self.text_max_length = text, text_encoder, int(text_max_length)
        self.tokenizer = tokenizer
        if text and tokenizer is None:
            raise DataError(f"text column {text!r} configured but no tokenizer loaded")

    # ---------------------------------------------------------------- building
    @classmethod
    def fit(cls, inputs_cfg, train_table, *, tokenizer: Any = None) -> InputEncoder:
        """Fit on ``train_table.meta`` only (val/test never change the state)."""
        meta = getattr(train_table, "meta", None)
        check_columns(meta, inputs_cfg.columns, "train split")
        tab = None
        if inputs_cfg.numeric or inputs_cfg.categorical:
            tab = TabularEncoder.fit(meta, inputs_cfg.numeric, inputs_cfg.categorical, where="train split",
                                     ids=train_table.ids)
        if inputs_cfg.text and tokenizer is None:
            from .text import load_tokenizer

            tokenizer = load_tokenizer(inputs_cfg.text_encoder)
        max_len = inputs_cfg.text_max_length
        limit = getattr(tokenizer, "model_max_length", None) if inputs_cfg.text else None
        if isinstance(limit, int) and 0 < limit < max_len:  # longer inputs would overflow the position embeddings
            log.warning("inputs.text_max_length=%d exceeds the limit of %s (%d tokens): using %d",
                        max_len, inputs_cfg.text_encoder, limit, limit)
            max_len = limit
        return cls(tab, text=inputs_cfg.text, text_encoder=inputs_cfg.text_encoder,
                   text_max_length=max_len, tokenizer=tokenizer if inputs_cfg.text else None)

    def to_dict(self) -> dict[str, Any]:
        return {"tabular": self.tabular.to_dict() if self.tabular else None, "text": self.text,
                "text_encoder": self.text_encoder, "text_max_length": self.text_max_length,
                "text_dir": TEXT_DIR if self.text else None, "side_inputs": self.names}

    @classmethod
    def from_dict(cls, d: dict[str, Any], base_dir: str | Path) -> InputEncoder:
        tokenizer = None
        if d.get("text"):
            from .text import load_tokenizer

            tokenizer = load_tokenizer(str(Path(base_dir) / (d.get("text_dir") or TEXT_DIR)))
        tab = TabularEncoder.from_dict(d["tabular"]) if d.get("tabular") else None
        return cls(tab, text=d.get("text"), text_encoder=d.get("text_encoder"),
                   text_max_length=d.get("text_max_length", 128), tokenizer=tokenizer)

    # ---------------------------------------------------------------- describing
    @property
    def names(self) -> list[str]:
        """Names (and order) of the side inputs (metadata, text) of the model."""
        out = []
        if self.tabular and self.tabular.numeric:
            out += ["numeric", "numeric_missing"]
        if self.tabular and self.tabular.categorical:
            out.append("categorical")
        if self.text:
            out += ["input_ids", "attention_mask"]
        return [*out, "present"]

    @property
    def expected_keys(self) -> list[str]:
        return [*(self.tabular.columns if self.tabular else []), *([self.text] if self.text else [])]

    def describe(self) -> dict[str, Any]:
        t = self.tabular
        return {"numeric": t.numeric if t else [], "categorical": {c: t.vocab[c] for c in t.categorical} if t else {},
                "text": self.text, "text_encoder": self.text_encoder, "text_max_length": self.text_max_length,
                "expected_keys": self.expected_keys, "model_inputs": ["image", *self.names]}

    # ---------------------------------------------------------------- encoding
    def encode_frame(self, frame: pd.DataFrame | None, *, where: str, ids: Sequence[str] | None = None,
                     warn: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        check_columns(frame, self.expected_keys, where)
        n = len(frame)
        out: dict[str, np.ndarray] = {}
        report: dict[str, Any] = {}
        present = np.zeros((n, 2), np.float32)
        if self.tabular:
            tab, report["metadata"] = self.tabular.encode(frame, where=where, ids=ids, warn=warn)
            present[:, 0] = tab.pop("present")
            out.update(tab)
        if self.text:
            from .text import tokenize

            enc, report["text"] = tokenize(self.tokenizer, list(frame[self.text]), self.text_max_length)
            present[:, 1] = enc.pop("present")
            out.update(enc)
            if warn and report["text"]["truncated"]:
                msg = (f"{where}: {report['text']['truncated']} of {n} text(s) in {self.text!r} are longer than "
                       f"inputs.text_max_length={self.text_max_length} tokens and were truncated")
                warnings.warn(msg, stacklevel=2)
                log.warning(msg)
        out["present"] = present
        return {k: out[k] for k in self.names}, report

    def encode_table(self, table, where: str) -> dict[str, torch.Tensor]:
        """Tensors aligned with the rows of ``table`` (its ``meta``)."""
        arrays, _ = self.encode_frame(getattr(table, "meta", None), where=where, ids=table.ids)
        return {k: torch.from_numpy(v) for k, v in arrays.items()}

    def encode_requests(self, n: int, metadata: Sequence[dict[str, Any] | None] | dict | None = None,
                        text: Sequence[str | None] | str | None = None) -> tuple[dict[str, np.ndarray], list[list[str]]]:
        """Arrays for ``n`` images from request dicts (None = no metadata) and texts; also the inputs used per row.

        Keys that are not configured inputs are a :class:`DataError` naming them and the expected keys.
        """
        metas = _per_row(metadata, n, "metadata")
        texts = _per_row(text, n, "text")
        keys = self.expected_keys
        rows = []
        for i, m in enumerate(metas):
            m = dict(m or {})
            if not isinstance(m, dict):
                raise DataError(f"metadata of image {i + 1} must be a JSON object, got {type(m).__name__}")
            unknown = sorted(k for k in m if k not in keys)
            if unknown:
                hint = did_you_mean(unknown[0], keys)
                expected = ", ".join(keys) if keys else "none (this model uses the image only)"
                raise DataError(f"unknown metadata key(s) {unknown}.{hint} Expected keys: {expected}")
            if texts[i] is not None:
                if not self.text:
                    raise DataError("text was given but this model has no text input")
                m[self.text] = texts[i]
            rows.append({k: m.get(k) for k in keys})
        frame = pd.DataFrame(rows, columns=keys) if keys else pd.DataFrame(index=range(n))
        arrays, _ = self.encode_frame(frame, where="request", warn=False)
        used = [["image"] + (["metadata"] if arrays["present"][i, 0] else []) + (["text"] if arrays["present"][i, 1]
                                                                                   else []) for i in range(n)]
        if self.tabular:
            for i, r in enumerate(rows):
                if arrays["present"][i, 0]:
                    used[i][1] = "metadata:" + ",".join(k for k in self.tabular.columns if _given(r.get(k)))
        return arrays, used


def _given(v: Any) -> bool:
    return not (v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip()))


def _per_row(values, n: int, what: str) -> list:
    if values is None:
        return [None] * n
    if isinstance(values, dict | str):
        values = [values] * n if n == 1 else None
        if values is None:
            raise DataError(f"{what}: give one entry per image (a list of {n})")
    values = list(values)
    if len(values) != n:
        raise DataError(f"{what}: got {len(values)} entries for {n} image(s); give one per image (None = unknown)")
    return values


def side_inputs_to(side_inputs: dict[str, torch.Tensor], idx, device: torch.device) -> dict[str, torch.Tensor]:
    """The rows ``idx`` of every side input, on ``device``."""
    idx = torch.as_tensor(idx)
    return {k: v[idx].to(device, non_blocking=True) for k, v in side_inputs.items()}
