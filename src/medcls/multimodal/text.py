"""The text branch: a Hugging Face tokenizer + encoder (``inputs.text_encoder``: a hub name or a local folder).

Loading never hangs offline: when the hub is unreachable (or ``HF_HUB_OFFLINE=1``)
only local files and the cache are tried, and a miss is one clear
:class:`~medcls.errors.ModelError`. A run keeps the tokenizer files and the encoder's
config in ``RUN/text_encoder/`` (bundles too), so evaluation, export and serving
never need the hub again. :func:`make_tiny_bert` writes a tiny randomly initialised
BERT (WordPiece vocab + config) for tests and examples, without any download.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..extras import require

log = logging.getLogger("medcls")

TINY_WORDS = tuple(" ".join([
    "lesion mass bone tumor benign malignant normal fracture pain swelling lytic sclerotic cortical",
    "periosteal reaction soft tissue knee femur tibia humerus hand foot lateral frontal view patient",
    "history no yes left right follow up suspect report the a of and with in is"]).split(" "))


def _offline() -> bool:
    from ..hub import hub_reachable

    return not hub_reachable()


def _load(kind: str, name: str, fn):
    local = Path(name).expanduser()
    if local.is_dir():
        try:
            return fn(str(local), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelError(f"inputs.text_encoder {name!r}: cannot load the {kind} from that folder: {e}") from None
    offline = _offline()
    try:
        return fn(name, local_files_only=offline)
    except (OSError, ValueError) as e:
        why = ("the Hugging Face hub is unreachable (or HF_HUB_OFFLINE=1) and it is not in the local cache"
               if offline else f"{type(e).__name__}: {e}")
        raise ModelError(f"inputs.text_encoder {name!r}: cannot load the {kind}: {why}. Run once with network "
                         "access to cache it, or point inputs.text_encoder at a local folder holding the model "
                         "(config.json, weights, tokenizer files)") from None


def load_tokenizer(name: str):
    require("transformers", "text inputs (inputs.text)")
    from transformers import AutoTokenizer

    return _load("tokenizer", name, AutoTokenizer.from_pretrained)


def load_text_model(name: str, *, pretrained: bool = True):
    """The encoder with its weights (``pretrained``) or only its architecture from ``config.json``."""
    require("transformers", "text inputs (inputs.text)")
    from transformers import AutoConfig, AutoModel

    if pretrained:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _load("encoder", name, lambda n, **kw: AutoModel.from_pretrained(n, attn_implementation="eager",
                                                                                   **kw))
    cfg = _load("encoder config", name, AutoConfig.from_pretrained)
    return AutoModel.from_config(cfg, attn_implementation="eager")


def save_text_files(tokenizer, model_config, out_dir: str | Path) -> Path:
    """Tokenizer files + encoder ``config.json`` (weights live in the checkpoint/bundle)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    model_config.save_pretrained(str(out))
    return out


def tokenize(tokenizer, texts: Sequence[str | None], max_length: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """``input_ids``/``attention_mask`` (N, max_length) int64 and ``present`` (N,) float32 (0 for a missing text).

    Texts longer than ``max_length`` tokens are truncated; the report counts them.
    """
    clean = [None if t is None or (isinstance(t, float) and math.isnan(t)) or not str(t).strip() else str(t)
             for t in texts]
    filled = [t if t is not None else "" for t in clean]
    full = tokenizer(filled, add_special_tokens=True, truncation=False)["input_ids"] if filled else []
    n_trunc = sum(len(ids) > max_length for ids in full)
    enc = tokenizer(filled, add_special_tokens=True, truncation=True, max_length=max_length, padding="max_length",
                    return_tensors="np")
    present = np.array([t is not None for t in clean], np.float32)
    return ({"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64),
             "present": present},
            {"truncated": int(n_trunc), "missing": int((present == 0).sum()), "max_length": max_length})


def make_tiny_bert(path: str | Path, *, hidden_size: int = 32, layers: int = 1, heads: int = 2,
                   max_position: int = 64, seed: int = 0, words: Sequence[str] = TINY_WORDS) -> Path:
    """A tiny randomly initialised BERT (weights + WordPiece tokenizer) in ``path`` — no download."""
    import torch
    require("transformers", "text inputs (inputs.text)")
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted(set("".join(words)) | set("0123456789.,"))
    vocab = specials + list(dict.fromkeys([*words, *chars, *(f"##{c}" for c in chars)]))
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True)
    tok.model_max_length = max_position
    tok.save_pretrained(str(out))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=hidden_size * 2,
                     max_position_embeddings=max_position)
    BertModel(cfg).save_pretrained(str(out))
    return out


def text_summary(model: Any) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    return {"model_type": getattr(cfg, "model_type", None), "hidden_size": getattr(cfg, "hidden_size", None)}
