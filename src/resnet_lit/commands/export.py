"""`resnet-lit export`: a checkpoint to safetensors, a torchvision state dict, ONNX, TorchScript or torch.export.

    resnet-lit export runs/r50/checkpoints/last.ckpt --format safetensors   # -> last.safetensors
    resnet-lit export last.ckpt --format torchvision --output resnet50_tv.pth
    resnet-lit export last.ckpt --format onnx --image-size 224           # checked with onnxruntime
    resnet-lit export last.ckpt --format pt2                             # torch.export program

Every exported graph is run once against the PyTorch model and refused if the outputs differ.
Loading the checkpoint is as safe as `init_weights` (weights_only / safetensors, see checkpointing/weights.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet_lit.checkpointing.weights import guess_architecture, load_into, load_state_dict_file
from resnet_lit.models import create_model
from resnet_lit.runs.exit_codes import OK, USAGE

log = logging.getLogger("resnet_lit")

FORMATS = {"safetensors": ".safetensors", "torchvision": ".pth", "onnx": ".onnx", "torchscript": ".torchscript.pt",
           "pt2": ".pt2"}
TORCHVISION_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
_SPEC_OPTIONS = ("shortcut", "stride_in_1x1", "zero_init_residual", "width", "in_chans")


class ExportError(ValueError):
    """The model cannot be exported in the requested format (the message says why and what to do)."""


def build_from_file(path: str | Path, arch: str | None = None,
                    num_classes: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model a weights file records (`arch_spec`), its weights loaded strictly; `arch` builds files
    without a record (torchvision / timm / plain state dicts)."""
    state_dict, metadata = load_state_dict_file(path)
    spec = metadata.get("arch_spec")
    if isinstance(spec, dict) and spec.get("name") and arch in (None, spec["name"]):
        options = {k: spec[k] for k in _SPEC_OPTIONS if k in spec}
        model = create_model(spec["name"], num_classes=spec.get("num_classes"), **options)
    elif arch is not None:
        fc = state_dict.get("fc.weight")
        classes = num_classes or (int(fc.shape[0]) if fc is not None else None)
        model = create_model(arch, num_classes=classes)
    else:
        raise ExportError(
            f"{path} records no architecture (no resnet-lit arch_spec); pass --arch. "
            f"It looks like: {guess_architecture(state_dict)}."
        )
    load_into(model, state_dict, metadata, num_classes_change="error", source=f"weights in {path}")
    return model.eval(), metadata


# ---------------------------------------------------------------------------------------------- formats


def export_safetensors(model: nn.Module, path: str | Path, class_names: list[str] | None = None) -> Path:
    """Weights plus `arch_spec` (and class names) in the header: `create_model(**arch_spec)` rebuilds the net."""
    from safetensors.torch import save_file

    header = {"format": "resnet-lit", "arch_spec": json.dumps(dict(model.arch_spec))}
    if class_names:
        header["class_names"] = json.dumps(list(class_names))
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=header)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # safetensors writes 0600; other exports (torch.save) follow the umask
    return Path(path)


def torchvision_state_dict(model: nn.Module, allow_v1: bool = False) -> dict[str, torch.Tensor]:
    """A state dict that `torchvision.models.resnetXX(num_classes=...)` loads strictly AND computes the same
    function with; refuses nets torchvision has no equivalent of."""
    spec = dict(getattr(model, "arch_spec", {}))
    name = spec.get("name")
    problems = []
    if name not in TORCHVISION_NAMES:
        problems.append(f"torchvision has no {name!r} (its ResNets are {', '.join(TORCHVISION_NAMES)}; "
                        "CIFAR and plain nets have no torchvision model)")
    if spec.get("shortcut") != "B":
        problems.append(f"shortcut {spec.get('shortcut')!r}: "
                        "torchvision only has option B (projection where the shape changes)")
    if float(spec.get("width", 1.0)) != 1.0:
        problems.append(f"width {spec.get('width')}: torchvision's ResNets have width 1")
    if spec.get("in_chans", 3) != 3:
        problems.append(f"in_chans {spec.get('in_chans')}: torchvision's ResNets take 3 channels")
    v1 = bool(spec.get("stride_in_1x1")) and name in ("resnet50", "resnet101", "resnet152")
    if v1 and not allow_v1:
        problems.append(
            "stride_in_1x1=True (v1, the paper's bottleneck): the weights would load into torchvision's v1.5 "
            "bottleneck (stride in the 3x3) without error but compute a different function; pass --allow-v1 "
            "only if you will patch torchvision's strides yourself"
        )
    if problems:
        raise ExportError(f"cannot export {name} as a torchvision state dict: " + "; ".join(problems)
                          + ". Use --format safetensors instead.")
    if v1:
        warnings.warn("exporting v1 (stride_in_1x1) weights: torchvision's resnet computes v1.5 with them",
                      stacklevel=2)
    state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    import torchvision

    reference = getattr(torchvision.models, name)(weights=None,
                                                  num_classes=spec.get("num_classes") or model.fc.out_features)
    reference.load_state_dict(state_dict, strict=True)  # the promise, checked on every export
    return state_dict


def export_torchvision(model: nn.Module, path: str | Path, allow_v1: bool = False) -> Path:
    torch.save(torchvision_state_dict(model, allow_v1), path)
    return Path(path)


def _example(model: nn.Module, image_size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, int(model.arch_spec.get("in_chans", 3)), image_size, image_size,
                       generator=torch.Generator().manual_seed(0))


def _max_diff(expected: torch.Tensor, got: Any) -> float:
    return float((expected.detach().float() - torch.as_tensor(got).float()).abs().max())


def _check(name: str, expected: torch.Tensor, got: Any, atol: float) -> float:
    diff = _max_diff(expected, got)
    if not diff <= atol:
        raise ExportError(f"{name} output differs from PyTorch's by {diff:.3g} (> atol {atol:g}): "
                          "the export is wrong, not written")
    return diff


def _dynamo_default() -> bool:
    """torch >= 2.9 exports ONNX with torch.export (needs onnxscript); older torch with TorchScript."""
    params = inspect.signature(torch.onnx.export).parameters
    dynamo_default = "dynamo" in params and params["dynamo"].default is True
    return dynamo_default and importlib.util.find_spec("onnxscript") is not None


def export_onnx(
    model: nn.Module,
    path: str | Path,
    image_size: int = 224,
    check_input: torch.Tensor | None = None,
    atol: float = 1e-4,
    opset: int | None = None,
    exporter: str = "auto",
) -> float:
    """ONNX with a dynamic batch dimension (input `image` [B, C, H, W] normalised, output `logits`),
    then checked with onnxruntime on `check_input` (default: a fixed random batch). Returns the largest
    absolute difference to PyTorch; the file is removed and ExportError raised above `atol`."""
    model = model.eval()
    x = _example(model, image_size)
    dynamo = _dynamo_default() if exporter == "auto" else exporter == "dynamo"
    kwargs: dict[str, Any] = {"input_names": ["image"], "output_names": ["logits"]}
    if opset is not None:
        kwargs["opset_version"] = opset
    params = inspect.signature(torch.onnx.export).parameters
    if dynamo:
        kwargs.update(dynamo=True, verbose=False, dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
        if "external_data" in params:
            kwargs["external_data"] = False  # one self-contained file (ResNet-152 is 240 MB, under protobuf's 2 GB)
    else:
        kwargs["dynamic_axes"] = {"image": {0: "batch"}, "logits": {0: "batch"}}
        if "dynamo" in params:
            kwargs["dynamo"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (x,), str(path), **kwargs)
    try:
        return check_onnx(model, path, check_input if check_input is not None else x, atol)
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise


def check_onnx(model: nn.Module, path: str | Path, x: torch.Tensor, atol: float = 1e-4) -> float:
    """Largest |onnxruntime - PyTorch| on `x`; ExportError above `atol`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"image": x.detach().float().numpy()})
    with torch.no_grad():
        expected = model.eval()(x)
    return _check("onnxruntime", expected, got, atol)


def export_torchscript(model: nn.Module, path: str | Path, image_size: int = 224, atol: float = 1e-4) -> float:
    """A traced TorchScript module (`torch.jit.load(path)`); checked on a second batch size."""
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice in newer torch
        traced = torch.jit.trace(model, _example(model, image_size))
        traced.save(str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
        x = _example(model, image_size, batch=3)
        return _check("TorchScript", model(x), loaded(x), atol)


def export_program(model: nn.Module, path: str | Path, image_size: int = 224, atol: float = 1e-4) -> float:
    """A `torch.export` program (`torch.export.load(path).module()`), dynamic batch dimension."""
    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(model, (_example(model, image_size),), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
        loaded = torch.export.load(str(path)).module()
        x = _example(model, image_size, batch=3)
        return _check("torch.export", model(x), loaded(x), atol)


# ---------------------------------------------------------------------------------------------- command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resnet-lit export", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a resnet-lit .ckpt, .safetensors, or a state dict .pt/.pth (then give --arch)")
    p.add_argument("--format", required=True, choices=list(FORMATS))
    p.add_argument("--output", "-o", default=None, help="output file (default: beside the checkpoint, format's suffix)")
    p.add_argument("--arch", default=None,
                   help="model name for files that record no architecture (torchvision/timm state dicts)")
    p.add_argument("--image-size", type=int, default=224,
                   help="pixels of the example input for onnx/torchscript/pt2 (batch is dynamic)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest accepted |exported - PyTorch| of the logits")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--onnx-exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="auto: torch's default (torch.export-based from torch 2.9, TorchScript-based before)")
    p.add_argument("--allow-v1", action="store_true",
                   help="torchvision format: export v1 (stride_in_1x1) weights anyway, with a warning")
    return p


def main(argv: list[str] | None = None) -> int:
    """`resnet-lit export ...`; returns the exit status (0 ok, 2 bad input or failed check)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    source = Path(args.checkpoint)
    output = Path(args.output) if args.output else source.with_name(source.stem + FORMATS[args.format])
    if output.resolve() == source.resolve():
        print(f"resnet-lit export: error: output {output} would overwrite the checkpoint; pass --output",
              file=sys.stderr)
        return USAGE
    try:
        model, metadata = build_from_file(source, args.arch)
        output.parent.mkdir(parents=True, exist_ok=True)
        detail = ""
        if args.format == "safetensors":
            export_safetensors(model, output, metadata.get("class_names"))
        elif args.format == "torchvision":
            export_torchvision(model, output, args.allow_v1)
            detail = f" (loads strictly into torchvision.models.{model.arch_spec['name']})"
        elif args.format == "onnx":
            diff = export_onnx(model, output, args.image_size, atol=args.atol, opset=args.opset,
                               exporter=args.onnx_exporter)
            detail = f" (onnxruntime vs PyTorch: max |diff| {diff:.2g})"
        elif args.format == "torchscript":
            detail = f" (max |diff| {export_torchscript(model, output, args.image_size, args.atol):.2g})"
        else:
            detail = f" (max |diff| {export_program(model, output, args.image_size, args.atol):.2g})"
    except (ValueError, FileNotFoundError) as e:  # UnsafeCheckpointError and ExportError are ValueErrors
        print(f"resnet-lit export: error: {e}", file=sys.stderr)
        return USAGE
    print(f"wrote {output}{detail}")
    return OK
