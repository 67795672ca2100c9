"""A Triton Inference Server model repository for a bundle's ONNX graph, for teams that serve ONNX on Triton.

``<repo>/<name>/config.pbtxt`` and ``<repo>/<name>/1/model.onnx`` (platform ``onnxruntime_onnx``, dynamic
batching). Triton returns the graph's raw ``logits`` (and ``features``): the bundle's post-processing travels
as the config's ``parameters`` (temperature, operating point, class names), to apply as ``softmax(logits /
T)`` (sigmoid for multilabel) and the threshold (a recalibrated bundle: then ``logit p = intercept + slope logit p``
of the positive class, ``medcls_recalibration``); ``medcls serve`` applies them itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..artefact import open_artefact
from ..errors import RunError
from ..utils import check_new_output, new_staging_dir, place_staged, url_name

MAX_BATCH = 64


def _tensor(name: str, dims: list[int]) -> str:
    return f'  {{\n    name: "{name}"\n    data_type: TYPE_FP32\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'


def triton_config(name: str, bundle: Path) -> str:
    """The ``config.pbtxt`` of ``bundle``'s ``model.onnx`` served as ``name`` (Triton's text protobuf)."""
    import onnx

    art = open_artefact(bundle)
    graph = onnx.load(str(art.file("model.onnx")), load_external_data=False).graph
    outs = [o.name for o in graph.output]
    if art.spec.inputs is not None:
        raise RunError(f"{bundle} is a fused model (image + metadata/text): its Triton config is not written here")
    pre, post, spec = art.spec.preprocess, art.postprocess_or_default(), art.spec.dataset
    width = {o.name: o.type.tensor_type.shape.dim[-1].dim_value for o in graph.output}
    params = {"medcls_task": spec.task, "medcls_class_names": json.dumps(list(spec.class_names)),
              "medcls_temperature": repr(post.temperature), "medcls_operating_point": post.selected,
              "medcls_threshold": repr(post.threshold), "medcls_input": "image in [0, 1], normalisation inside"}
    if post.recalibration:  # a model updated on external data: the update travels too, never silently dropped
        r = post.recalibration
        params["medcls_recalibration"] = json.dumps({k: r[k] for k in ("method", "intercept", "slope",
                                                                       "positive_index")})
    if spec.task == "multilabel":
        params["medcls_thresholds"] = json.dumps(post.label_thresholds(spec.class_names))
    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {MAX_BATCH}",
             "input [", _tensor("image", [pre.in_chans, pre.size, pre.size]), "]",
             "output [", ",\n".join(_tensor(o, [width[o]]) for o in outs), "]",
             "dynamic_batching { }", "instance_group [ { kind: KIND_CPU count: 1 } ]"]
    lines += [f'parameters: {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}' for k, v in params.items()]
    return "\n".join(lines) + "\n"


def check_triton_target(repo: Path, bundle: Path) -> Path:
    """The model folder ``repo/<name>``; it must not exist yet (checked before any export work)."""
    target = repo / url_name(bundle)
    check_new_output(target, "Triton model folders", hint="choose another --triton repository")
    return target


def write_triton_repository(bundle: str | Path, repo: str | Path) -> Path:
    """``repo/<bundle folder name>/{config.pbtxt, 1/model.onnx}``, written atomically; returns the model folder."""
    bundle, repo = Path(bundle), Path(repo)
    target = check_triton_target(repo, bundle)
    repo.mkdir(parents=True, exist_ok=True)
    tmp = new_staging_dir(repo, ".triton-")
    try:
        (tmp / "1").mkdir()
        shutil.copy2(open_artefact(bundle).file("model.onnx"), tmp / "1" / "model.onnx")
        (tmp / "config.pbtxt").write_text(triton_config(target.name, bundle))
        place_staged(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
