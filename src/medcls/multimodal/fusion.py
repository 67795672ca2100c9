"""``FusionClassifier``: the image :class:`~medcls.models.Classifier` fused with metadata and text.

* image: the timm backbone's pooled features (``forward_features`` + ``forward_head(pre_logits=True)``);
* metadata: one token per column (numeric value x learned vector + bias, or a learned per-column
  "missing" vector; categorical embedding with missing/unknown rows), averaged into one vector;
* text: the Hugging Face encoder's masked mean of token states;
* a modality that is absent (``present`` = 0, or dropped with probability ``modality_dropout`` while
  training) is replaced by its learned "missing" embedding, so any subset of inputs gets a prediction.

Fusions: ``concat`` (MLP on the concatenation), ``gated`` (learned per-sample, per-modality sigmoid
gates on the concatenation), ``cross_attention`` (the image token attends to the metadata column
tokens and the text token with ``nn.MultiheadAttention``), ``meta_only`` (no image branch; ablation).
"""

from __future__ import annotations

from typing import Any, get_args

import torch
from torch import nn

from ..choices import Fusion
from ..errors import ConfigError
from ..models.factory import Classifier

FUSIONS = tuple(f for f in get_args(Fusion) if f != "none")  # what a FusionClassifier does (none: the image model)


class TabularTokens(nn.Module):
    """(B, n_num + n_cat, d) column tokens."""

    def __init__(self, n_numeric: int, cardinalities: list[int], dim: int) -> None:
        super().__init__()
        self.n_numeric = n_numeric
        self.num_weight = nn.Parameter(torch.randn(n_numeric, dim) * 0.1)
        self.num_bias = nn.Parameter(torch.zeros(n_numeric, dim))
        self.num_missing = nn.Parameter(torch.randn(n_numeric, dim) * 0.1)
        self.embeddings = nn.ModuleList(nn.Embedding(k, dim) for k in cardinalities)

    def forward(self, numeric: torch.Tensor | None, numeric_missing: torch.Tensor | None,
                categorical: torch.Tensor | None) -> torch.Tensor:
        tokens = []
        if self.n_numeric:
            m = numeric_missing.unsqueeze(-1)
            val = numeric.unsqueeze(-1) * self.num_weight + self.num_bias
            tokens.append(val * (1 - m) + self.num_missing * m)
        if len(self.embeddings):
            tokens.append(torch.stack([e(categorical[:, j]) for j, e in enumerate(self.embeddings)], dim=1))
        return torch.cat(tokens, dim=1)


def _mlp(d_in: int, d_hidden: int, d_out: int, drop: float = 0.1) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(drop),
                         nn.Linear(d_hidden, d_out))


class FusionClassifier(nn.Module):
    """``forward(image, **side_inputs) -> logits``; side inputs (metadata, text) as
    :class:`~medcls.multimodal.inputs.InputEncoder` makes them."""

    def __init__(self, image: Classifier | None, num_classes: int, *, fusion: str, dim: int = 64,
                 n_numeric: int = 0, cardinalities: list[int] | None = None, text_model: nn.Module | None = None,
                 freeze_text: bool = True, modality_dropout: float = 0.0) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"model.fusion must be one of none, {', '.join(FUSIONS)}, got {fusion!r}")
        cardinalities = list(cardinalities or [])
        self.fusion, self.dim = fusion, dim
        self.has_meta = bool(n_numeric or cardinalities)
        self.has_text = text_model is not None
        if not (self.has_meta or self.has_text):
            raise ConfigError(f"model.fusion={fusion} needs metadata or text inputs")
        self.freeze_text, self.modality_dropout = freeze_text, float(modality_dropout)
        self.image = image if fusion != "meta_only" else None
        if self.image is not None:
            net = self.image.net
            net.reset_classifier(0)  # the fusion head replaces the image-only classifier
            feat = int(getattr(net, "head_hidden_size", None) or net.num_features)
            self.image_proj = nn.Sequential(nn.Linear(feat, dim), nn.GELU())
        self.mean_std = (tuple(image.mean.flatten().tolist()), tuple(image.std.flatten().tolist())) if image else None
        if self.has_meta:
            self.tabular = TabularTokens(n_numeric, cardinalities, dim)
            self.meta_missing = nn.Parameter(torch.randn(dim) * 0.1)
        if self.has_text:
            self.text_model = text_model
            self.text_proj = nn.Linear(int(text_model.config.hidden_size), dim)
            self.text_missing = nn.Parameter(torch.randn(dim) * 0.1)
            if freeze_text:
                self.text_model.requires_grad_(False)
        n_mod = int(self.image is not None) + int(self.has_meta) + int(self.has_text)
        if fusion == "cross_attention":
            if self.image is None:
                raise ConfigError("model.fusion=cross_attention needs the image branch")
            self.attn = nn.MultiheadAttention(dim, num_heads=4 if dim % 4 == 0 else 1, batch_first=True)
            self.attn_norm = nn.LayerNorm(dim)
            self.head = _mlp(2 * dim, 2 * dim, num_classes)
        else:
            if fusion == "gated":
                self.gate = nn.Linear(n_mod * dim, n_mod)
            self.head = _mlp(n_mod * dim, 2 * dim, num_classes)

    # ------------------------------------------------------------ branches
    def train(self, mode: bool = True):
        super().train(mode)
        if self.has_text and self.freeze_text:
            self.text_model.eval()  # a frozen encoder never uses dropout
        return self

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        x = (image - self.image.mean) / self.image.std
        net = self.image.net
        return self.image_proj(net.forward_head(net.forward_features(x), pre_logits=True))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ctx = torch.no_grad() if self.freeze_text else torch.enable_grad()
        with ctx:
            h = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.text_proj(pooled)

    def _present(self, present: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        p = torch.ones(batch, 2, device=device) if present is None else present.to(device).float()
        if self.training and self.modality_dropout > 0:
            keep = (torch.rand(batch, 2, device=device) >= self.modality_dropout).float()
            p = p * keep
        return p

    # ------------------------------------------------------------ forward
    def forward(self, image: torch.Tensor, numeric: torch.Tensor | None = None,
                numeric_missing: torch.Tensor | None = None, categorical: torch.Tensor | None = None,
                input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                present: torch.Tensor | None = None) -> torch.Tensor:
        b = image.shape[0]
        p = self._present(present, b, image.device)
        vecs, tokens = [], []
        img = self.image_features(image) if self.image is not None else None
        if img is not None:
            vecs.append(img)
        if self.has_meta:
            tok = self.tabular(numeric, numeric_missing, categorical)
            pm = p[:, 0:1]
            tok = tok * pm.unsqueeze(-1) + self.meta_missing * (1 - pm).unsqueeze(-1)
            vecs.append(tok.mean(1))
            tokens.append(tok)
        if self.has_text:
            pt = p[:, 1:2]
            txt = self.text_features(input_ids, attention_mask) * pt + self.text_missing * (1 - pt)
            vecs.append(txt)
            tokens.append(txt.unsqueeze(1))
        if self.fusion == "cross_attention":
            q = img.unsqueeze(1)
            kv = torch.cat([q, *tokens], dim=1)
            att, _ = self.attn(q, kv, kv, need_weights=False)
            return self.head(torch.cat([img, self.attn_norm(att.squeeze(1) + img)], dim=1))
        h = torch.cat(vecs, dim=1)
        if self.fusion == "gated":
            g = torch.sigmoid(self.gate(h))
            h = torch.cat([v * g[:, j : j + 1] for j, v in enumerate(vecs)], dim=1)
        return self.head(h)

    # ------------------------------------------------------------ optimisation
    def _groups_of(self) -> dict[str, list[nn.Parameter]]:
        backbone = {id(p) for p in self.image.net.parameters()} if self.image is not None else set()
        text = {id(p) for p in self.text_model.parameters()} if self.has_text else set()
        out: dict[str, list[nn.Parameter]] = {"backbone": [], "text": [], "head": []}
        for p in self.parameters():
            out["backbone" if id(p) in backbone else "text" if id(p) in text else "head"].append(p)
        return out

    def head_parameters(self) -> list[nn.Parameter]:
        """Everything but the image backbone (``set_backbone_trainable`` and two-stage schedules)."""
        g = self._groups_of()
        return g["head"] + g["text"]

    def param_groups(self, lr: float, backbone_lr_scale: float, weight_decay: float,
                     text_lr_scale: float) -> list[dict[str, Any]]:
        """Head at ``lr``, image backbone at ``lr x backbone_lr_scale``, text encoder at ``lr x text_lr_scale``
        (left out when frozen); no weight decay on norms and biases."""
        scale = {"head": 1.0, "backbone": backbone_lr_scale, "text": text_lr_scale}
        out = []
        for name, params in self._groups_of().items():
            if name == "text" and self.freeze_text:
                continue
            for no_wd in (False, True):
                ps = [p for p in params if (p.ndim <= 1) == no_wd]
                if ps:
                    out.append({"params": ps, "lr": lr * scale[name], "weight_decay": 0.0 if no_wd else weight_decay,
                                "name": f"{name}{'_nowd' if no_wd else ''}"})
        return out


class FixedSideInputs(nn.Module):
    """The fused model seen as an image-only model (fixed metadata/text): Grad-CAM runs on the image branch.

    ``net`` is registered first so layer names read as for a plain Classifier (``net.layer4.1``).
    """

    def __init__(self, model: FusionClassifier, side_inputs: dict[str, torch.Tensor]) -> None:
        super().__init__()
        if model.image is None:
            raise ConfigError("a meta_only model has no image branch to explain")
        self.net = model.image.net
        self.fused = model
        self.side_inputs = side_inputs
        self.training = model.training  # a new Module says "training"; callers save and restore this mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ex = {k: v.to(x.device).expand(x.shape[0], *v.shape[1:]) for k, v in self.side_inputs.items()}
        return self.fused(x, **ex)


class Positional(nn.Module):
    """``forward(image, *side_inputs)`` in a fixed order: what ONNX export traces."""

    def __init__(self, model: FusionClassifier, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, image: torch.Tensor, *side_inputs: torch.Tensor) -> torch.Tensor:
        return self.model(image, **dict(zip(self.names, side_inputs, strict=True)))
