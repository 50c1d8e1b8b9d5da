"""`resnet-lit export`: every format reproduces the checkpoint's outputs on real photographs."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torchvision
from weights_helpers import real_batch, with_trained_bn

from resnet_lit.checkpointing.weights import load_weights
from resnet_lit.commands.export import export_onnx, export_safetensors, main
from resnet_lit.models import create_model
from resnet_lit.runs.cli import main as cli_main
from resnet_lit.training.classifier import ImageClassifier

CLASSES = [f"class_{i}" for i in range(10)]


@pytest.fixture(scope="module")
def images(imagewoof_root: Path) -> torch.Tensor:
    return real_batch(imagewoof_root, n=3, size=64)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, images: torch.Tensor) -> tuple[Path, torch.nn.Module]:
    """A resnet-lit Lightning checkpoint of a resnet18 (10 classes, non-default BN statistics) and its net."""
    module = ImageClassifier(arch="resnet18", num_classes=10, class_names=CLASSES)
    with_trained_bn(module.model, images)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(module)
    path = tmp_path_factory.mktemp("run") / "last.ckpt"
    trainer.save_checkpoint(path)
    return path, module.model.eval()


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_cli_dispatch_and_onnx_matches_pytorch_on_real_images(run, images: torch.Tensor, tmp_path: Path,
                                                              capsys) -> None:
    import onnxruntime as ort

    ckpt, model = run
    out = tmp_path / "r18.onnx"
    with pytest.raises(SystemExit) as e:
        cli_main(["export", str(ckpt), "--format", "onnx", "--image-size", "64", "--output", str(out)])
    assert e.value.code == 0
    assert f"wrote {out} (onnxruntime vs PyTorch: max |diff|" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for x in (images, images[:1]):  # the batch dimension is dynamic
        (got,) = session.run(["logits"], {"image": x.numpy()})
        np.testing.assert_allclose(got, _logits(model, x).numpy(), rtol=0, atol=1e-4)


def test_onnx_torchscript_exporter_as_on_older_torch(run, images: torch.Tensor, tmp_path: Path) -> None:
    """torch < 2.9 exports with the TorchScript-based exporter: the same check on real images."""
    _, model = run
    diff = export_onnx(model, tmp_path / "ts.onnx", image_size=64, check_input=images, exporter="torchscript")
    assert 0 <= diff <= 1e-4


def test_torchvision_export_loads_into_torchvision(run, images: torch.Tensor, tmp_path: Path, capsys) -> None:
    ckpt, model = run
    out = tmp_path / "tv.pth"
    assert main([str(ckpt), "--format", "torchvision", "-o", str(out)]) == 0
    assert "loads strictly into torchvision.models.resnet18" in capsys.readouterr().out
    tv = torchvision.models.resnet18(weights=None, num_classes=10)
    tv.load_state_dict(torch.load(out, map_location="cpu", weights_only=True), strict=True)
    assert torch.equal(_logits(tv, images), _logits(model, images))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("resnet20", {}, "torchvision has no 'resnet20'"),
        ("resnet18", {"shortcut": "A"}, "shortcut 'A': torchvision only has option B"),
        ("resnet50", {"stride_in_1x1": True}, "stride_in_1x1=True (v1, the paper's bottleneck)"),
        ("resnet18", {"width": 0.5}, "width 0.5: torchvision's ResNets have width 1"),
    ],
)
def test_torchvision_export_refuses_what_torchvision_lacks(name, options, message, tmp_path: Path, capsys) -> None:
    src = export_safetensors(create_model(name, **options), tmp_path / "m.safetensors")
    assert main([str(src), "--format", "torchvision"]) == 2
    err = capsys.readouterr().err
    assert "cannot export" in err and message in err and "Use --format safetensors instead" in err
    assert not (tmp_path / "m.pth").exists()


def test_v1_torchvision_export_only_when_asked(tmp_path: Path) -> None:
    src = export_safetensors(create_model("resnet50", stride_in_1x1=True), tmp_path / "v1.safetensors")
    with pytest.warns(UserWarning, match="torchvision's resnet computes v1.5"):
        assert main([str(src), "--format", "torchvision", "--allow-v1"]) == 0
    assert (tmp_path / "v1.pth").is_file()


def test_safetensors_export_records_architecture(run, images: torch.Tensor, tmp_path: Path) -> None:
    from safetensors import safe_open

    ckpt, model = run
    assert main([str(ckpt), "--format", "safetensors", "-o", str(tmp_path / "w.safetensors")]) == 0
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        header = f.metadata()
    spec = json.loads(header["arch_spec"])
    assert spec == dict(model.arch_spec) and json.loads(header["class_names"]) == CLASSES
    rebuilt = create_model(spec.pop("name"), **{k: v for k, v in spec.items()})
    load_weights(rebuilt, tmp_path / "w.safetensors")
    assert torch.equal(_logits(rebuilt, images), _logits(model, images))


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_torchscript_and_torch_export(fmt: str, run, images: torch.Tensor, tmp_path: Path) -> None:
    ckpt, model = run
    out = tmp_path / f"m.{fmt}"
    assert main([str(ckpt), "--format", fmt, "--image-size", "64", "-o", str(out)]) == 0
    loaded = torch.jit.load(str(out)) if fmt == "torchscript" else torch.export.load(str(out)).module()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), _logits(model, images), rtol=0, atol=1e-5)


def test_file_without_architecture_needs_arch(tmp_path: Path, images: torch.Tensor, capsys) -> None:
    tv = with_trained_bn(torchvision.models.resnet18(weights=None, num_classes=7), images)
    torch.save(tv.state_dict(), src := tmp_path / "tv18.pth")
    assert main([str(src), "--format", "safetensors"]) == 2
    err = capsys.readouterr().err
    assert "records no architecture (no resnet-lit arch_spec); pass --arch. It looks like: resnet18" in err
    assert main([str(src), "--format", "safetensors", "--arch", "resnet18"]) == 0
    model = create_model("resnet18", num_classes=7)
    load_weights(model, tmp_path / "tv18.safetensors")
    assert torch.equal(_logits(model, images), _logits(tv, images))


def test_export_refuses_unsafe_pickle(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (exec, (f"open({str(marker)!r}, 'w')",))

    torch.save({"state_dict": Evil()}, src := tmp_path / "evil.ckpt")
    assert main([str(src), "--format", "onnx"]) == 2
    assert f"Refusing to load {src}" in capsys.readouterr().err
    assert not marker.exists()


def test_safetensors_export_is_readable_like_the_other_exports(tmp_path):
    # safetensors' writer creates files 0600; an export follows the umask as torch.save's files do
    src = export_safetensors(create_model("resnet20"), tmp_path / "m.safetensors")
    torch.save({}, tmp_path / "m.pt")
    assert src.stat().st_mode & 0o777 == (tmp_path / "m.pt").stat().st_mode & 0o777
