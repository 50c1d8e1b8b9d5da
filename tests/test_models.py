"""The model family of issue 2: counts against the paper and torchvision, shortcut options,
plain vs residual, torchvision interchangeability, the timm-style API and create_model's errors.
Synthetic tensors only: these are shape and equality checks, no data is learned."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from resnet_lit.models import (
    ARCHS,
    BasicBlock,
    Bottleneck,
    PadShortcut,
    count_flops,
    count_params,
    create_model,
    list_models,
)

BLOCKS = (BasicBlock, Bottleneck)
NATURAL_SIZE = {"imagenet": 224, "cifar": 32}


def blocks_of(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, BLOCKS)]


def seeded_input(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- counts: Table 1, Table 6, torchvision ------------------------------------------------

TORCHVISION_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
}  # fmt: skip


@pytest.mark.parametrize("name", TORCHVISION_PARAMS)
def test_imagenet_param_counts_equal_torchvision(name: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        ours, theirs = create_model(name), getattr(torchvision.models, name)()
    assert count_params(ours) == TORCHVISION_PARAMS[name] == count_params(theirs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


# Table 6, rounded as the paper prints them: (name, millions, decimals).
CIFAR_PARAMS = [("resnet20", 0.27, 2), ("resnet32", 0.46, 2), ("resnet44", 0.66, 2),
                ("resnet56", 0.85, 2), ("resnet110", 1.7, 1), ("resnet1202", 19.4, 1)]  # fmt: skip


@pytest.mark.parametrize(("name", "millions", "decimals"), CIFAR_PARAMS)
def test_cifar_param_counts_match_table6(name: str, millions: float, decimals: int) -> None:
    with torch.device("meta"):
        model = create_model(name)
        plain = create_model(name.replace("resnet", "plain"))
    assert round(count_params(model) / 1e6, decimals) == millions
    assert count_params(plain) == count_params(model)  # option A costs no parameters


# Table 1 multiply-adds of the paper's v1 nets (stride in the first 1x1).
TABLE1_MACS = {"resnet18": 1.8e9, "resnet34": 3.6e9, "resnet50": 3.8e9, "resnet101": 7.6e9, "resnet152": 11.3e9}


@pytest.mark.parametrize("name", TABLE1_MACS)
def test_multiply_adds_match_table1(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name, stride_in_1x1=True)
    macs = count_flops(model, (1, 3, 224, 224))
    assert abs(macs / TABLE1_MACS[name] - 1) < 0.03, f"{name}: {macs / 1e9:.3f}e9 multiply-adds"


def test_v15_costs_more_than_v1_and_plain_costs_the_same_as_option_b() -> None:
    with torch.device("meta"):
        v1 = count_flops(create_model("resnet50", stride_in_1x1=True))
        v15 = count_flops(create_model("resnet50"))
        plain34, res34 = count_flops(create_model("plain34")), count_flops(create_model("resnet34"))
    assert abs(v15 / 4.1e9 - 1) < 0.03  # the 3x3 runs at the higher resolution
    assert v15 > v1
    # Table 2's plain and residual 34 differ only by the three projection shortcuts of option B.
    assert 0 < res34 - plain34 < 0.01 * plain34


def test_count_flops_real_tensor_matches_meta_and_restores_modes() -> None:
    model = create_model("resnet20")
    model.train()
    model.bn1.eval()  # a frozen BN inside a training model must stay frozen
    real = count_flops(model, (2, 3, 32, 32))
    assert model.training and not model.bn1.training and model.layer1[0].bn1.training
    with torch.device("meta"):
        meta = count_flops(create_model("resnet20"), (2, 3, 32, 32))
    assert real == meta
    assert abs(real / 2 / 41e6 - 1) < 0.03  # ResNet-20 at 32x32: about 41e6 multiply-adds per image


# --- torchvision interchangeability ------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_state_dict_loads_strictly_and_outputs_match(name: str) -> None:
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)().eval()
    ours = create_model(name).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = seeded_input(2, 3, 96, 96)
    with torch.no_grad():
        expected = theirs(x)
        assert torch.allclose(ours(x), expected, atol=1e-5, rtol=1e-4)
        if name == "resnet50":
            # v1 has the same shapes, so the weights load silently, but it is another function.
            v1 = create_model(name, stride_in_1x1=True).eval()
            v1.load_state_dict(theirs.state_dict(), strict=True)
            assert not torch.allclose(v1(x), expected, atol=1e-3)


def test_stride_placement_v1_vs_v15() -> None:
    v1, v15 = create_model("resnet50", stride_in_1x1=True), create_model("resnet50")
    assert (v1.layer2[0].conv1.stride, v1.layer2[0].conv2.stride) == ((2, 2), (1, 1))
    assert (v15.layer2[0].conv1.stride, v15.layer2[0].conv2.stride) == ((1, 1), (2, 2))
    assert v1.arch_spec["stride_in_1x1"] is True and v15.arch_spec["stride_in_1x1"] is False


# --- shortcut options -------------------------------------------------------------------


def test_option_a_shortcuts_have_no_parameters_and_pad_with_zeros() -> None:
    model = create_model("resnet20")  # CIFAR default is A
    pads = [b.downsample for b in blocks_of(model) if b.downsample is not None]
    assert len(pads) == 2 and all(isinstance(p, PadShortcut) for p in pads)  # starts of stages 2 and 3
    assert sum(count_params(p) for p in pads) == 0 and all(not list(p.buffers()) for p in pads)
    x = seeded_input(2, 16, 32, 32)
    y = model.layer2[0].downsample(x)
    assert y.shape == (2, 32, 16, 16)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and torch.count_nonzero(y[:, 16:]) == 0
    with torch.device("meta"):
        a34, plain34 = create_model("resnet34", shortcut="A"), create_model("plain34")
    assert count_params(a34) == count_params(plain34)


def test_option_b_projects_only_where_shape_changes_and_c_everywhere() -> None:
    with torch.device("meta"):
        b18, c18 = create_model("resnet18"), create_model("resnet18", shortcut="C")
        b50, b20 = create_model("resnet50"), create_model("resnet20", shortcut="B")
    projected = [n for n, m in b18.named_modules() if isinstance(m, BLOCKS) and m.downsample is not None]
    assert projected == ["layer2.0", "layer3.0", "layer4.0"]
    assert all(isinstance(b.downsample, nn.Sequential) for b in blocks_of(c18))
    assert count_params(c18) > count_params(b18)
    # the first bottleneck of stage 1 widens 64 -> 256 at stride 1: a projection too
    assert [n for n, m in b50.named_modules() if isinstance(m, BLOCKS) and m.downsample is not None] == [
        f"layer{i}.0" for i in range(1, 5)
    ]
    # two 1x1 convs + BN
    assert count_params(b20) == count_params(create_model("resnet20")) + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


# --- plain vs residual ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["plain20", "plain34", "plain50"])
def test_plain_nets_have_no_shortcut(name: str) -> None:
    model = create_model(name)
    assert all(b.downsample is None and not b.residual for b in blocks_of(model))
    assert not any(isinstance(m, PadShortcut) or "downsample" in n for n, m in model.named_modules())
    assert model.arch_spec["shortcut"] is None


@pytest.mark.parametrize(("name", "kwargs", "size"), [("resnet20", {}, 16), ("resnet50", {"width": 0.25}, 32)])
def test_zero_init_residual_blocks_are_exactly_their_shortcut(name: str, kwargs: dict, size: int) -> None:
    model = create_model(name, zero_init_residual=True, **kwargs)
    with torch.no_grad():
        for block in blocks_of(model):
            # a non-negative input, as every block sees after the stem's ReLU
            x = torch.relu(seeded_input(2, block.conv1.in_channels, size, size))
            shortcut = x if block.downsample is None else block.downsample(x)
            # branch = 0 * normalised + 0 exactly, so y = relu(shortcut + 0) = relu(shortcut)
            assert torch.equal(block(x), torch.relu(shortcut))
            if block.downsample is None:
                assert torch.equal(block(x), x)


def test_zeroed_branch_cuts_a_plain_net_but_not_a_resnet() -> None:
    torch.manual_seed(0)
    plain, res = create_model("plain20").eval(), create_model("resnet20").eval()
    x = torch.relu(seeded_input(2, 16, 32, 32))
    with torch.no_grad():
        for model in (plain, res):
            nn.init.zeros_(model.layer1[1].bn2.weight)
            nn.init.zeros_(model.layer1[1].bn2.bias)
        assert torch.count_nonzero(plain.layer1[1](x)) == 0  # signal cut: output no longer depends on x
        assert torch.equal(res.layer1[1](x), x)  # signal passes unchanged through the shortcut
        images = seeded_input(3, 3, 32, 32, seed=1)
        out = plain(images)
        assert torch.allclose(out, out[:1].expand_as(out))  # every image gets the same logits
        out = res(images)
        assert not torch.allclose(out, out[:1].expand_as(out), atol=1e-4)


# --- every name, natural size -----------------------------------------------------------


def test_list_models_has_the_papers_names() -> None:
    names = list_models()
    for depth in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110, 1202):
        assert f"resnet{depth}" in names and f"plain{depth}" in names
    assert len(names) == len(set(names)) == 22


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_and_runs_at_natural_size(name: str) -> None:
    family = ARCHS[name].family
    model = create_model(name).eval()
    size, classes = NATURAL_SIZE[family], {"imagenet": 1000, "cifar": 10}[family]
    with torch.no_grad():
        feats = model.forward_features(torch.zeros(1, 3, size, size))
        out = model.forward_head(feats)
    final = {"imagenet": 7, "cifar": 8}[family]  # 224 / 32 and 32 / 4 pixels
    assert feats.shape == (1, model.num_features, final, final)
    assert out.shape == (1, classes) and torch.isfinite(out).all()
    assert model.num_classes == classes and model.arch_spec["name"] == name


# --- timm-style API, options -------------------------------------------------------------


def test_forward_features_head_and_reset_classifier() -> None:
    model = create_model("resnet50", width=0.25).eval()
    x = seeded_input(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 512, 2, 2) and model.num_features == 512
        pooled = model.forward_head(feats, pre_logits=True)
        assert torch.allclose(pooled, feats.mean((2, 3)))
        assert torch.allclose(model.forward_head(feats), model(x))
        assert torch.allclose(model.fc(pooled), model(x))
        # any input size: the pooling is adaptive (multi-scale testing)
        assert model(seeded_input(1, 3, 97, 131)).shape == (1, 1000)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.num_classes == 7 and model.arch_spec["num_classes"] == 7
    assert model.fc.in_features == 512
    with pytest.raises(ValueError, match="num_classes must be an int >= 1, got 0"):
        model.reset_classifier(0)


def test_width_scales_channels() -> None:
    wide, thin = create_model("resnet20", width=2.0), create_model("resnet50", width=0.5)
    assert wide.conv1.out_channels == 32 and wide.layer3[0].conv2.out_channels == 128 and wide.num_features == 128
    assert wide.fc.in_features == 128 and wide(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert thin.conv1.out_channels == 32 and thin.layer4[0].conv1.out_channels == 256 and thin.num_features == 1024
    # conv parameters scale with width squared: about 4x for ResNet-20 at width 2
    assert 3.8 < count_params(wide) / count_params(create_model("resnet20")) < 4.1
    assert create_model("resnet20", width=0.1).conv1.out_channels == 2  # rounded, never 0


def test_in_chans_and_num_classes() -> None:
    gray = create_model("resnet18", num_classes=5, in_chans=1)
    assert gray.conv1.weight.shape == (64, 1, 7, 7)
    assert gray(torch.zeros(2, 1, 64, 64)).shape == (2, 5)
    assert create_model("resnet110", in_chans=4)(torch.zeros(1, 4, 32, 32)).shape == (1, 10)


def test_he_init_and_bn_init() -> None:
    model = create_model("resnet50")
    w = model.layer4[0].conv2.weight  # 512 x 512 x 3 x 3: fan_out = 512 * 9
    assert abs(w.std().item() / (2 / (512 * 9)) ** 0.5 - 1) < 0.02
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)
    zero = create_model("resnet50", zero_init_residual=True)
    assert all(torch.count_nonzero(b.bn3.weight) == 0 and torch.count_nonzero(b.bn1.weight) > 0
               for b in blocks_of(zero))


def test_arch_spec_is_plain_data_and_rebuilds_the_model() -> None:
    model = create_model("resnet56", num_classes=100, shortcut="B", width=1.5, zero_init_residual=True)
    spec = json.loads(json.dumps(model.arch_spec))
    assert spec == {"name": "resnet56", "num_classes": 100, "shortcut": "B", "stride_in_1x1": False,
                    "zero_init_residual": True, "width": 1.5, "in_chans": 3}  # fmt: skip
    rebuilt = create_model(**spec)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.arch_spec == spec


# --- memory format and compile ------------------------------------------------------------


@pytest.mark.parametrize(("name", "kwargs", "size"),
                         [("resnet20", {}, 32), ("resnet50", {"width": 0.25, "shortcut": "A"}, 64)])
def test_channels_last_gives_the_same_output(name: str, kwargs: dict, size: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    x = seeded_input(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    # Other convolution kernels sum in another order: float32 rounding, scaled to the logits' size.
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.slow
def test_compiled_model_matches_eager_and_keeps_state_dict_keys() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    x = seeded_input(4, 3, 32, 32)
    keys = list(model.state_dict())
    with torch.no_grad():
        expected = model(x)
        model.compile()  # in place: no _orig_mod. prefix in the keys (DESIGN.md)
        got = model(x)
    assert list(model.state_dict()) == keys
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


# --- create_model errors ----------------------------------------------------------------


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model name 'resnet51'") as err:
        create_model("resnet51")
    assert all(name in str(err.value) for name in list_models())


def test_unknown_option_lists_valid_options() -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['dropout'\]") as err:
        create_model("resnet18", dropout=0.5)
    for option in ("shortcut", "stride_in_1x1", "zero_init_residual", "width", "in_chans"):
        assert option in str(err.value)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("resnet18", {"shortcut": "D"}, "shortcut='D' is not valid; use one of 'A', 'B', 'C' or None"),
        ("resnet20", {"width": 0}, "width=0 is not valid; use a number > 0"),
        ("resnet20", {"width": -1.5}, "width=-1.5 is not valid"),
        ("resnet20", {"width": "2"}, "width='2' is not valid"),
        ("resnet20", {"in_chans": 0}, "in_chans=0 is not valid; use an int >= 1"),
        ("resnet50", {"num_classes": 0}, "num_classes=0 is not valid; use an int >= 1"),
        ("resnet50", {"stride_in_1x1": "yes"}, "stride_in_1x1='yes' is not valid; use True or False"),
        ("plain34", {"shortcut": "B"}, "plain34 is a plain net without shortcuts"),
        ("plain20", {"zero_init_residual": True}, "plain20 is a plain net without residual branches"),
    ],
)
def test_bad_option_values_name_the_value(name: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model(name, **options)


def test_create_model_with_weights_loads_them_strictly(tmp_path) -> None:
    from resnet_lit.commands.export import export_safetensors

    torch.manual_seed(0)
    trained = create_model("resnet20").eval()
    path = export_safetensors(trained, tmp_path / "r20.safetensors")
    loaded = create_model("resnet20", weights=path).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), trained(x))
    with pytest.raises(ValueError, match="different architecture"):  # the header records resnet20
        create_model("resnet32", weights=path)
    with pytest.raises(ValueError, match="fc.weight"):  # the classifier must fit too: no silent re-init
        create_model("resnet20", num_classes=100, weights=path)


def test_the_public_api_imports_from_the_top_level_and_create_model_needs_no_lightning() -> None:
    code = (
        "import sys, resnet_lit\n"
        "from resnet_lit import create_model, list_models\n"
        "model = create_model('resnet20')\n"
        "assert 'lightning' not in sys.modules, 'create_model imported Lightning'\n"
        "from resnet_lit import ImageClassifier, CIFARDataModule, ImageNetDataModule\n"
        "from resnet_lit.training.classifier import ImageClassifier as C\n"
        "assert ImageClassifier is C and 'resnet56' in list_models()\n"
        "assert sorted(resnet_lit.__all__) == sorted(['__version__', *resnet_lit._PUBLIC])\n"
        "print(type(model).__name__, CIFARDataModule.__name__, ImageNetDataModule.__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["CifarResNet", "CIFARDataModule", "ImageNetDataModule"]
