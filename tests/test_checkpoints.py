"""Loading weights from every supported source, key cleaning, mismatch messages, unsafe pickles."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torchvision
from weights_helpers import real_batch, with_trained_bn

from resnet_lit.checkpointing.readable import UnsafeCheckpointError
from resnet_lit.checkpointing.weights import (
    guess_architecture,
    infer_arch,
    load_into,
    load_state_dict_file,
    load_weights,
)
from resnet_lit.commands.export import export_safetensors
from resnet_lit.models import create_model
from resnet_lit.training.classifier import ImageClassifier


@pytest.fixture(scope="module")
def images(imagewoof_root: Path) -> torch.Tensor:
    return real_batch(imagewoof_root, n=4, size=64)


def _lightning_ckpt(module: pl.LightningModule, path: Path) -> Path:
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def _rewrap(ckpt: Path, out: Path, prefix_from: str, prefix_to: str) -> Path:
    """The same Lightning checkpoint with its state-dict keys renamed (compiled / DDP-wrapped runs)."""
    c = torch.load(ckpt, map_location="cpu", weights_only=True)
    c["state_dict"] = {k.replace(prefix_from, prefix_to, 1): v for k, v in c["state_dict"].items()}
    torch.save(c, out)
    return out


SOURCES = [
    "lightning", "lightning_compiled", "lightning_ddp", "state_dict_pt", "legacy_format",
    "nested_state_dict", "nested_model", "ddp_state_dict", "safetensors",
]  # fmt: skip


@pytest.mark.parametrize("source", SOURCES)
def test_each_source_gives_identical_logits(source: str, tmp_path: Path, images: torch.Tensor) -> None:
    module = ImageClassifier(arch="resnet18", num_classes=10)
    writer = with_trained_bn(module.model, images)
    with torch.no_grad():
        expected = writer(images)
    sd = writer.state_dict()
    if source.startswith("lightning"):
        path = _lightning_ckpt(module, tmp_path / "run.ckpt")
        if source == "lightning_compiled":  # torch.compile(model) stored as the attribute: model._orig_mod.*
            path = _rewrap(path, tmp_path / "compiled.ckpt", "model.", "model._orig_mod.")
        elif source == "lightning_ddp":
            path = _rewrap(path, tmp_path / "ddp.ckpt", "model.", "module.model.")
    elif source == "state_dict_pt":
        torch.save(sd, path := tmp_path / "w.pt")
    elif source == "legacy_format":  # torch < 1.6 files: not a zip, so no mmap
        torch.save(sd, path := tmp_path / "w.pth", _use_new_zipfile_serialization=False)
    elif source == "nested_state_dict":
        torch.save({"state_dict": sd, "epoch": 7}, path := tmp_path / "w.pth")
    elif source == "nested_model":
        torch.save({"model": sd, "optimizer": {"state": {}}}, path := tmp_path / "w.pth")
    elif source == "ddp_state_dict":
        torch.save({f"module.{k}": v for k, v in sd.items()}, path := tmp_path / "w.pth")
    else:
        path = export_safetensors(writer, tmp_path / "w.safetensors")

    state_dict, metadata = load_state_dict_file(path)
    assert set(state_dict) == set(sd)
    reader = create_model("resnet18", num_classes=10)
    assert load_into(reader, state_dict, metadata) == []
    with torch.no_grad():
        assert torch.equal(reader.eval()(images), expected)
    if source.startswith("lightning") or source == "safetensors":
        assert metadata["arch_spec"]["name"] == "resnet18"


def test_compiled_checkpoint_loads_into_eager_model(tmp_path: Path, images: torch.Tensor) -> None:
    """A real torch.compile wrapper's state dict (keys `_orig_mod.*`) loads into an uncompiled net."""
    writer = with_trained_bn(create_model("resnet20"), torch.nn.functional.interpolate(images, size=32))
    compiled = torch.compile(writer)
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    torch.save(compiled.state_dict(), tmp_path / "c.pt")
    reader = create_model("resnet20")
    load_weights(reader, tmp_path / "c.pt")
    x = torch.nn.functional.interpolate(images, size=32)
    with torch.no_grad():
        assert torch.equal(reader.eval()(x), writer(x))


def test_torchvision_resnet50_round_trip(tmp_path: Path, images: torch.Tensor) -> None:
    from resnet_lit.commands.export import torchvision_state_dict

    tv = with_trained_bn(torchvision.models.resnet50(weights=None), images)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    ours = create_model("resnet50")
    load_weights(ours, tmp_path / "tv.pth")
    with torch.no_grad():
        assert torch.equal(ours.eval()(images), tv(images))
    back = torchvision_state_dict(ours)
    tv2 = torchvision.models.resnet50(weights=None)
    tv2.load_state_dict(back, strict=True)
    original = tv.state_dict()
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)
    with torch.no_grad():
        assert torch.equal(tv2.eval()(images), tv(images))


def test_old_files_without_num_batches_tracked_load(images: torch.Tensor) -> None:
    """Weights saved before BN counted batches (early torchvision releases) have no num_batches_tracked."""
    tv = with_trained_bn(torchvision.models.resnet18(weights=None), images)
    sd = {k: v for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked")}
    ours = create_model("resnet18")
    load_into(ours, sd)
    with torch.no_grad():
        assert torch.equal(ours.eval()(images), tv(images))


def test_new_head_reinitialised_rest_loaded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = create_model("resnet18", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "ten.pt")
    target = create_model("resnet18", num_classes=5)
    fc_before = target.fc.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="resnet_lit"):
        load_weights(target, tmp_path / "ten.pt")
    assert "10 classes, the model 5" in caplog.text and "re-initialised fc.bias, fc.weight" in caplog.text
    src = source.state_dict()
    for k, v in target.state_dict().items():
        if k.startswith("fc."):
            assert v.shape[0] == 5
        else:
            assert torch.equal(v, src[k]), k
    assert not torch.equal(target.fc.weight, fc_before)  # re-initialised, not left as it was
    with pytest.raises(ValueError, match=r"fc.weight file \[10, 512\] vs model \[5, 512\]"):
        load_into(create_model("resnet18", num_classes=5), src, num_classes_change="error")


# ------------------------------------------------------------------------------------------- mismatches


def test_wrong_depth_lists_keys_and_guesses_file() -> None:
    sd = torchvision.models.resnet34(weights=None).state_dict()
    with pytest.raises(ValueError) as e:
        load_into(create_model("resnet18"), sd, source="weights in r34.pth")
    msg = str(e.value)
    assert "weights in r34.pth do not fit the model resnet18" in msg
    assert "unexpected keys (in the file, not in the model)" in msg and "layer1.2.conv1.weight" in msg
    assert "The file looks like: resnet34 (ImageNet stem, basic blocks 3-4-6-3, shortcut B" in msg


def test_wrong_width_shows_shapes() -> None:
    sd = create_model("resnet20", width=2.0).state_dict()
    with pytest.raises(ValueError,
                       match=r"keys with wrong shapes: conv1.weight file \[32, 3, 3, 3\] "
                             r"vs model \[16, 3, 3, 3\]") as e:
        load_into(create_model("resnet20"), sd)
    assert "width 2" in str(e.value)


def test_v1_file_into_v15_model_is_refused(tmp_path: Path) -> None:
    v1 = create_model("resnet50", stride_in_1x1=True)
    path = export_safetensors(v1, tmp_path / "v1.safetensors")
    model = create_model("resnet50")  # v1.5: the same shapes, another function
    with pytest.raises(ValueError, match=r"stride_in_1x1: file True, model False"):
        load_weights(model, path)


def test_v1_lightning_checkpoint_into_v15_is_refused(tmp_path: Path) -> None:
    path = _lightning_ckpt(ImageClassifier(arch="resnet50", num_classes=4, stride_in_1x1=True), tmp_path / "v1.ckpt")
    with pytest.raises(ValueError,
                       match=r"different architecture than the model: stride_in_1x1: file True, model False"):
        load_weights(create_model("resnet50", num_classes=4), path)


def test_shortcut_a_into_b(tmp_path: Path) -> None:
    a = create_model("resnet20")  # CIFAR default: option A
    # recorded: an error by the arch_spec even before shapes
    path = export_safetensors(a, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match=r"shortcut: file 'A', model 'B'"):
        load_weights(create_model("resnet20", shortcut="B"), path)
    # not recorded: the missing projection keys, and what the file looks like
    with pytest.raises(ValueError) as e:
        load_into(create_model("resnet20", shortcut="B"), a.state_dict())
    assert "missing keys (in the model, not in the file): layer2.0.downsample.0.weight" in str(e.value)
    assert "The file looks like: resnet20 with shortcut A, or plain20" in str(e.value)


def test_plain_net_file_into_residual_net_is_refused(tmp_path: Path) -> None:
    path = export_safetensors(create_model("plain20"), tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match=r"name: file 'plain20', model 'resnet20'"):
        load_weights(create_model("resnet20"), path)


def test_guess_architecture() -> None:
    assert guess_architecture(torchvision.models.resnet50(weights=None).state_dict()).startswith(
        "resnet50 (ImageNet stem, bottleneck blocks 3-4-6-3, shortcut B, width 1, 3 input channels, 1000 classes)"
    )
    a = infer_arch(create_model("resnet56").state_dict())
    assert (a["family"], a["blocks_per_stage"], a["shortcut"], a["num_classes"]) == ("cifar", [9, 9, 9], "A", 10)
    c = infer_arch(create_model("resnet18", shortcut="C", width=0.5).state_dict())
    assert (c["shortcut"], c["width"], c["depth"]) == ("C", 0.5, 18)
    assert guess_architecture({"weight": torch.zeros(1)}).startswith("unknown (not a ResNet state dict")


# ------------------------------------------------------------------------------------------- security


class _Malicious:
    """Unpickling this runs code: it would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("suffix", [".pth", ".ckpt"])
def test_malicious_pickle_is_refused_and_does_not_run(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / f"evil{suffix}"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": _Malicious(marker)}, path)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError) as e:
        load_weights(create_model("resnet20"), path)
    msg = str(e.value)
    assert f"Refusing to load {path}" in msg and "weights_only=True" in msg and "exec" in msg
    assert "If you trust the file" in msg and "torch.save" in msg  # says how to convert a trusted file
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: an unrestricted load does run the payload
    assert marker.read_text() == "pwned"


def test_legacy_format_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "legacy.pt"
    torch.save(_Malicious(marker), path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match="Refusing to load"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_not_a_state_dict_and_missing_file(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"x.pt holds a dict with keys \['epoch', 'note'\], not a state dict"):
        load_state_dict_file(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_state_dict_file(tmp_path / "nope.pt")
