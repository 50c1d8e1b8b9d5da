"""Load, clean and check weights from any ResNet checkpoint, safely.

Sources accepted by `load_state_dict_file`:
  * a resnet-lit Lightning `.ckpt` (keys `model.*`, hyperparameters kept as metadata),
    written with or without `torch.compile` (`_orig_mod.`) and with or without DDP (`module.`);
  * a plain state dict `.pt` / `.pth`, or a dict wrapping one under `state_dict` / `model` / ...;
  * a `.safetensors` file (metadata, e.g. our `arch_spec`, read from its header);
  * torchvision and timm ResNet state dicts (same key names as ours: `conv1, bn1, layer1..4, fc`,
    `layerX.Y.downsample.0/.1`).

Security: a pickle can run arbitrary code when it is unpickled, so every `torch.load` here uses
`weights_only=True` (tensors and plain containers only); a file that needs anything else is refused
with `UnsafeCheckpointError`. safetensors files hold no code at all. A file that is empty, cut short or
not a checkpoint at all raises `CheckpointFileError` (readable.py), one line naming the file.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from resnet_lit.checkpointing.contents import training_checkpoint_or_none
from resnet_lit.checkpointing.readable import CheckpointFileError, empty_file_error, safe_torch_load, unreadable

log = logging.getLogger("resnet_lit")

# Prefixes that wrappers add: DDP / DataParallel (`module.`), torch.compile's OptimizedModule (`_orig_mod.`).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Keys under which people nest a state dict inside a bigger checkpoint dict.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "model_state", "net", "weights", "params")
# Architecture fields that change what the weights compute; a recorded mismatch is an error even when
# every tensor shape agrees (e.g. v1 vs v1.5 stride placement, shortcut A vs plain net).
_ARCH_FIELDS = ("name", "shortcut", "stride_in_1x1", "width", "in_chans")


class InitWeightsError(ValueError):
    """``init_weights`` cannot start this run: the file is missing, unsafe, or does not fit the model.
    The CLI prints its message alone, without a traceback."""


# ----------------------------------------------------------------------------------------------
# reading files


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    empty = empty_file_error(path)
    if empty is not None:
        raise empty
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError (and OSError)
        raise unreadable(path, e) from None
    metadata: dict[str, Any] = {}
    for key, value in header.items():  # header values are strings; ours hold JSON
        try:
            metadata[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            metadata[key] = value
    return tensors, metadata


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def clean_state_dict(state_dict: Mapping[str, torch.Tensor], *, strip_model: bool = False) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes: leading `module.` (DDP), `_orig_mod.` anywhere (torch.compile wrapper),
    and `model.` (a LightningModule's backbone attribute) when `strip_model` or when every key has it."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        key = key.replace("._orig_mod.", ".")
        out[key] = value
    if strip_model or (out and all(k.startswith("model.") for k in out)):
        out = {k[len("model."):]: v for k, v in out.items() if k.startswith("model.")}
        out = clean_state_dict(out) if any(k.startswith(_WRAPPER_PREFIXES) for k in out) else out
    return out


def _plain(value: Any) -> Any:
    """Hyperparameters as JSON-able plain data (paths become strings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def load_state_dict_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read weights from `path` and return `(state_dict, metadata)` with backbone key names
    (`conv1.weight`, `layer1.0.bn1.running_mean`, `fc.bias`, ...).

    `metadata` holds what the file records: for our checkpoints `arch_spec` (and `hparams` for a
    Lightning `.ckpt`), for safetensors the header; empty for torchvision / timm files.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        shown = path if path.is_absolute() else f"{path} (read as {path.absolute()})"
        raise FileNotFoundError(f"weights file not found: {shown}")
    if path.suffix == ".safetensors":
        state_dict, metadata = _read_safetensors(path)
        metadata.setdefault("source", "safetensors")
        return clean_state_dict(state_dict), metadata

    obj = safe_torch_load(path)
    metadata: dict[str, Any] = {}
    if training_checkpoint_or_none(obj, path) is not None:  # a newer resnet-lit's: refused, not misread
        hparams = _plain(obj.get("hyper_parameters") or {})
        metadata = {"source": "lightning", "hparams": hparams}
        recorded = obj.get("resnet_lit") if isinstance(obj.get("resnet_lit"), Mapping) else {}
        spec = recorded.get("arch_spec")  # ImageClassifier.on_save_checkpoint
        if spec:
            metadata["arch_spec"] = _plain(spec)
        if recorded.get("class_names") or hparams.get("class_names"):
            metadata["class_names"] = _plain(recorded.get("class_names") or hparams.get("class_names"))
        raw = {k: v for k, v in obj["state_dict"].items() if isinstance(v, torch.Tensor)}
        raw = clean_state_dict(raw)  # DDP / compile-wrapper prefixes may come before `model.` too
        return clean_state_dict(raw, strip_model=any(k.startswith("model.") for k in raw)), metadata
    if _is_state_dict(obj):
        return clean_state_dict(obj), {"source": "state_dict"}
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if _is_state_dict(obj.get(key)):
                metadata = {k: _plain(v) for k,
                            v in obj.items() if k not in _NESTED_KEYS and not isinstance(v, torch.Tensor)}
                metadata["source"] = f"state_dict under {key!r}"
                return clean_state_dict(obj[key]), metadata
    kind = type(obj).__name__
    keys = f" with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else ""
    raise ValueError(
        f"{path} holds a {kind}{keys}, not a state dict: expected a mapping of parameter names to tensors, "
        f"possibly nested under one of {list(_NESTED_KEYS)}, or a Lightning checkpoint."
    )


# ----------------------------------------------------------------------------------------------
# what architecture do these weights belong to?


def infer_arch(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture facts that key names and shapes reveal: family, blocks per stage, block type,
    shortcut option, width, classes. (Stride placement v1/v1.5 cannot be seen from shapes.)"""
    keys = set(state_dict)
    blocks: dict[int, set[int]] = {}
    for key in keys:
        m = re.match(r"layer(\d+)\.(\d+)\.", key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    conv1 = state_dict.get("conv1.weight")
    if conv1 is None or not blocks:
        raise ValueError(f"not a ResNet state dict: no conv1.weight / layerX.Y keys (first keys: {sorted(keys)[:8]})")
    stages = [max(blocks[i]) + 1 for i in sorted(blocks)]
    bottleneck = any(k.endswith(".conv3.weight") for k in keys)
    cifar = conv1.shape[-1] == 3 and len(stages) == 3
    stem = int(conv1.shape[0])
    width = stem / (16 if cifar else 64)
    ds_blocks = {tuple(map(int, m.groups())) for k in keys if (m := re.match(r"layer(\d+)\.(\d+)\.downsample\.", k))}
    all_blocks = {(s, b) for s, bs in blocks.items() for b in bs}
    if not ds_blocks:
        shortcut = "A"  # identity / zero-padding shortcuts: also what a plain net looks like
    elif ds_blocks == all_blocks:
        shortcut = "C"
    else:
        shortcut = "B"
    depth = (3 if bottleneck else 2) * sum(stages) + 2
    fc = state_dict.get("fc.weight")
    return {
        "name": f"resnet{depth}",
        "family": "cifar" if cifar else "imagenet",
        "depth": depth,
        "blocks_per_stage": stages,
        "block": "bottleneck" if bottleneck else "basic",
        "shortcut": shortcut,
        "width": width,
        "in_chans": int(conv1.shape[1]),
        "num_classes": int(fc.shape[0]) if fc is not None else None,
    }


def guess_architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A one-line description of the network these weights fit, e.g.
    `resnet50 (ImageNet stem, bottleneck blocks 3-4-6-3, shortcut B, width 1, 1000 classes)`."""
    try:
        a = infer_arch(state_dict)
    except ValueError as e:
        return f"unknown ({e})"
    name = a["name"]
    if a["shortcut"] == "A":
        name += f" with shortcut A, or plain{a['depth']} (same weights)"
    return (
        f"{name} ({'CIFAR' if a['family'] == 'cifar' else 'ImageNet'} stem, {a['block']} blocks "
        f"{'-'.join(map(str, a['blocks_per_stage']))}, shortcut {a['shortcut']}, width {a['width']:g}, "
        f"{a['in_chans']} input channels, {a['num_classes']} classes)"
    )


# ----------------------------------------------------------------------------------------------
# loading into a model


def _listing(title: str, items: list[str], limit: int = 12) -> str:
    more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {len(items)} {title}: " + ", ".join(items[:limit]) + more


def _spec_mismatch(recorded: Mapping[str, Any], model_spec: Mapping[str, Any], bottleneck: bool) -> list[str]:
    diffs = []
    for field in _ARCH_FIELDS:
        if field not in recorded or field not in model_spec:
            continue
        if field == "stride_in_1x1" and not bottleneck:  # no 1x1 conv in a basic block: no effect
            continue
        a, b = recorded[field], model_spec[field]
        if field == "width":
            a, b = float(a), float(b)
        if a != b:
            diffs.append(f"{field}: file {a!r}, model {b!r}")
    return diffs


def _head_keys(model: nn.Module) -> set[str]:
    if not isinstance(getattr(model, "fc", None), nn.Linear):
        return set()
    return {f"fc.{name}" for name, _ in model.fc.named_parameters()}


def load_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
    *,
    num_classes_change: str = "reinit",
    source: str = "the weights",
) -> list[str]:
    """Load `state_dict` (backbone key names) into `model` strictly and return the re-initialised keys.

    * Where `metadata["arch_spec"]` records the architecture, it must agree with `model.arch_spec`
      (name, shortcut, stride_in_1x1, width, in_chans) even if every shape matches.
    * When only the classifier's shape differs (another `num_classes`) and `num_classes_change`
      is "reinit", `fc` is re-initialised (and logged) and everything else loads strictly;
      with "error" that is a mismatch too.
    * Any other missing, unexpected or wrongly shaped key raises `ValueError` listing them (with shapes)
      and what architecture the weights look like.
    """
    if num_classes_change not in ("reinit", "error"):
        raise ValueError(f"num_classes_change must be 'reinit' or 'error', got {num_classes_change!r}")
    metadata = metadata or {}
    model_spec = getattr(model, "arch_spec", None)
    recorded = metadata.get("arch_spec")
    if isinstance(recorded, Mapping) and isinstance(model_spec, Mapping):
        bottleneck = any(k.endswith(".conv3.weight") for k in model.state_dict())
        diffs = _spec_mismatch(recorded, model_spec, bottleneck)
        if diffs:
            raise ValueError(
                f"{source} were written by a different architecture than the model: " + "; ".join(diffs)
                + f". The file records {dict(recorded)}. Build the model with the file's settings "
                "(e.g. --model.arch / --model.shortcut / --model.stride_in_1x1 / --model.width) or use other weights."
            )

    own = model.state_dict()
    state_dict = dict(state_dict)
    for key, value in own.items():  # files from before BN counted batches lack num_batches_tracked
        running_mean = key[: -len("num_batches_tracked")] + "running_mean"
        if key.endswith("num_batches_tracked") and key not in state_dict and running_mean in state_dict:
            state_dict[key] = value.clone()
    # In network order (stem first), as a reader scans them.
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]

    head = _head_keys(model)
    head_only = not missing and not unexpected and wrong and set(wrong) <= head
    if head_only and num_classes_change == "reinit":
        file_classes = state_dict["fc.weight"].shape[0] if "fc.weight" in state_dict else "?"
        keep = {k: v for k, v in state_dict.items() if k not in head}
        result = model.load_state_dict(keep, strict=False)
        assert set(result.missing_keys) == head and not result.unexpected_keys, result
        model.fc.reset_parameters()
        log.warning(
            "%s have %s classes, the model %s: loaded everything but the classifier, re-initialised %s",
            source, file_classes, model.fc.out_features, ", ".join(sorted(head)),
        )
        return sorted(head)

    if missing or unexpected or wrong:
        model_name = model_spec.get("name") if isinstance(model_spec, Mapping) else type(model).__name__
        msg = f"{source} do not fit the model {model_name}:"
        if missing:
            msg += _listing("missing keys (in the model, not in the file)", missing)
        if unexpected:
            msg += _listing("unexpected keys (in the file, not in the model)", unexpected)
        if wrong:
            shown = [f"{k} file {list(state_dict[k].shape)} vs model {list(own[k].shape)}" for k in wrong]
            msg += _listing("keys with wrong shapes", shown)
        msg += f"\n  The file looks like: {guess_architecture(state_dict)}."
        try:
            msg += f"\n  The model is: {guess_architecture(own)}."
        except Exception:  # noqa: BLE001 - a non-ResNet model has no description
            pass
        raise ValueError(msg)
    model.load_state_dict(state_dict, strict=True)
    return []


def load_init_weights(model: nn.Module, path: str | Path, num_classes_change: str = "reinit") -> None:
    """``ImageClassifier``'s ``init_weights`` into ``model``, in place; ``InitWeightsError`` (whose message
    the CLI prints alone) if they cannot be: missing, broken, unsafe, or another net's weights."""
    try:
        load_weights(model, path, num_classes_change=num_classes_change)
    except CheckpointFileError as error:  # empty, cut short, not weights: the message names the file
        raise InitWeightsError(f"init_weights: {error}") from error
    except (OSError, ValueError) as error:  # missing, unsafe, or another net's weights
        raise InitWeightsError(f"init_weights {path}: {error}") from error
    rank_zero_info(f"initial weights from {path}")


def load_weights(model: nn.Module, path: str | Path, *, num_classes_change: str = "reinit") -> dict[str, Any]:
    """Read `path` (any source `load_state_dict_file` accepts) into `model`; returns the file's metadata.
    This is what `ImageClassifier(init_weights=PATH)` calls."""
    state_dict, metadata = load_state_dict_file(path)
    reinit = load_into(model, state_dict, metadata, num_classes_change=num_classes_change, source=f"weights in {path}")
    log.info("initialised %s from %s (%s)%s", getattr(model, "arch_spec", {}).get("name", "model"), path,
             metadata.get("source", "?"), f", re-initialised {reinit}" if reinit else "")
    return metadata
