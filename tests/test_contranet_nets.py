"""Tests for ContraNet's architecture (guardnet.nets.contranet)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from guardnet.nets.contranet import (
    ContraNetConfig,
    ContraNetDiscriminator,
    ContraNetDMM,
    ContraNetEncoder,
    ContraNetGenerator,
    ResNetFeatures,
    build_contranet,
)
from guardnet.nets.contranet.dmm import build_feature_extractor
from guardnet.nets.contranet.encoder import _WholeMapConv
from guardnet.nets.resnet_cifar import CifarResNet

pytestmark = pytest.mark.usefixtures("flush_denormals")


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("num_classes", "in_channels"), [(10, 1), (43, 3)])
def test_shapes(num_classes: int, in_channels: int) -> None:
    torch.manual_seed(0)
    cfg = ContraNetConfig.small(num_classes, in_channels)
    nets = build_contranet(cfg).eval()
    assert set(nets.keys()) == {"encoder", "generator", "dis", "d_phi", "d_aux", "dmm"}
    x = torch.rand(4, in_channels, 32, 32) * 2 - 1
    y = torch.tensor([0, 1, num_classes - 1, 2])
    with torch.no_grad():
        mu, logvar = nets["encoder"](x)
        assert mu.shape == logvar.shape == (4, cfg.latent_dim)
        rebuilt = nets["generator"](mu, y)
        assert rebuilt.shape == x.shape
        for key in ("dis", "d_phi", "d_aux"):
            assert nets[key](x, y).shape == (4,)
        assert nets["dmm"](x, rebuilt, y).shape == (4, 2)
    # Separate weights for the three discriminators.
    assert nets["dis"].linear.parametrizations.weight.original is not (
        nets["d_phi"].linear.parametrizations.weight.original
    )


def test_encoder_mu_is_deterministic_and_sample_differs() -> None:
    torch.manual_seed(0)
    enc = ContraNetEncoder(ContraNetConfig.small(10, 3)).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        mu, _ = enc(x)
        assert torch.equal(enc.encode(x), mu)
        assert torch.equal(enc.encode(x), enc.encode(x))
        gen = torch.Generator().manual_seed(1)
        s1 = enc.encode(x, sample=True, generator=gen)
        s2 = enc.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(s1, mu)
    assert torch.equal(s1, s2)


def test_generator_range_and_label_dependence() -> None:
    torch.manual_seed(0)
    cfg = ContraNetConfig.small(10, 1)
    gen = ContraNetGenerator(cfg).eval()
    z = torch.randn(4, cfg.latent_dim) * 3
    with torch.no_grad():
        a = gen(z, torch.zeros(4, dtype=torch.long))
        b = gen(z, torch.full((4,), 7, dtype=torch.long))
    assert a.min() > -1 and a.max() < 1
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="z must have"):
        gen(torch.randn(4, cfg.latent_dim + 1), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("label_in_stem", [False, True])
def test_generator_label_in_stem_feeds_the_label_to_the_4x4_map(label_in_stem: bool) -> None:
    torch.manual_seed(0)
    cfg = ContraNetConfig(num_classes=10, in_channels=3, g_ch=2, label_in_stem=label_in_stem)
    gen = ContraNetGenerator(cfg).eval()
    extra = cfg.shared_dim if label_in_stem else 0
    assert gen.linear.in_features == cfg.chunk_size + extra
    stems: list[torch.Tensor] = []
    gen.linear.register_forward_hook(lambda _m, _i, out: stems.append(out))
    z = torch.randn(3, cfg.latent_dim)
    with torch.no_grad():
        out = gen(z, torch.tensor([0, 1, 2]))
        gen(z, torch.tensor([5, 6, 7]))
    assert out.shape == (3, 3, 32, 32)
    # Without it the layout map sees the latent alone; with it, the label too.
    assert torch.allclose(stems[0], stems[1]) is not label_in_stem


def test_discriminator_projection_depends_on_label() -> None:
    torch.manual_seed(0)
    dis = ContraNetDiscriminator(ContraNetConfig.small(10, 3)).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a = dis(x, torch.tensor([0, 0]))
        b = dis(x, torch.tensor([5, 5]))
        h = dis.features(x)
        diff = dis.projection(h, torch.tensor([0, 0])) - dis.projection(h, torch.tensor([5, 5]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a - b, diff)


def test_dmm_class_conditional_layer_matches_per_sample_reference() -> None:
    torch.manual_seed(0)
    cfg = ContraNetConfig(num_classes=5, in_channels=3, dmm_backbone="cnn", dmm_width=0.5)
    dmm = ContraNetDMM(cfg).eval()
    x = torch.rand(6, 3, 32, 32)
    xr = torch.rand(6, 3, 32, 32)
    y = torch.tensor([4, 0, 2, 2, 1, 3])
    with torch.no_grad():
        out = dmm(x, xr, y)
        f = torch.cat([dmm.f_real(x), dmm.f_syn(xr)], dim=1)
        ref = torch.stack(
            [dmm.head(f[i] @ dmm.fc1.weight[y[i]] + dmm.fc1.bias[y[i]]) for i in range(len(y))]
        )
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert dmm.fc1.weight.shape == (5, 2 * dmm.feature_dim, cfg.dmm_hidden)


@pytest.mark.parametrize("backbone", ["cnn", "mobilenet_v2", "resnet20"])
def test_dmm_shared_inputs_match_repeated_inputs(backbone: str) -> None:
    """``x_index`` (F_real embeds each shared input once) gives the logits and gradients of
    repeating the inputs, also in train mode: a batch where every input appears twice has the
    batch-norm statistics of its distinct inputs."""
    torch.manual_seed(0)
    cfg = ContraNetConfig(num_classes=5, in_channels=3, dmm_backbone=backbone, dmm_width=0.25)
    dmm = ContraNetDMM(cfg).train()
    x = torch.rand(6, 3, 32, 32)
    index = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 4, 5])
    xr = torch.rand(12, 3, 32, 32)
    y = torch.randint(0, 5, (12,))
    state = {k: v.clone() for k, v in dmm.state_dict().items()}

    def logits_and_grads(**kwargs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        dmm.load_state_dict(state)
        dmm.zero_grad()
        inputs = x if kwargs else x[index]
        out = dmm(inputs, xr, y, **kwargs)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in dmm.parameters()]

    repeated, repeated_grads = logits_and_grads()
    shared, shared_grads = logits_and_grads(x_index=index)
    torch.testing.assert_close(shared, repeated, atol=1e-5, rtol=1e-4)
    for a, b in zip(shared_grads, repeated_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
    with torch.no_grad():  # and it is not a no-op: other rows give other logits
        other = dmm.eval()(x, xr, y, x_index=index.flip(0))
        assert not torch.equal(other, dmm(x[index], xr, y))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"in_channels": 0}, "in_channels"),
        ({"image_size": 28}, "image_size"),
        ({"latent_dim": 81}, "divisible"),
        ({"num_latent_chunks": 3}, "num_latent_chunks"),
        ({"g_ch": -1}, "g_ch"),
        ({"d_ch": 2.5}, "d_ch"),
        ({"self_attention": 1}, "self_attention"),
        ({"self_attention": True, "g_ch": 1}, "at least 8 channels"),
        ({"dmm_backbone": "resnet"}, "dmm_backbone"),
        ({"dmm_width": 0}, "dmm_width"),
        ({"dmm_last_conv": "yes"}, "dmm_last_conv"),
        ({"label_in_stem": 1}, "label_in_stem"),
        ({"dmm_backbone": "resnet20", "dmm_input_mean": (0.5,) * 3}, "go together"),
        ({"dmm_input_mean": (0.5,) * 3, "dmm_input_std": (0.2,) * 3}, "'resnet20' DMM backbone"),
        (
            {"dmm_backbone": "resnet20", "dmm_input_mean": (0.5,), "dmm_input_std": (0.2,)},
            r"dmm_input_mean must hold 3 finite numbers",
        ),
        (
            {"dmm_backbone": "resnet20", "dmm_input_mean": (0.5,) * 3, "dmm_input_std": (0,) * 3},
            r"dmm_input_std must be > 0",
        ),
        (
            {
                "dmm_backbone": "resnet20",
                "dmm_input_mean": (0.5, 0.5, float("nan")),
                "dmm_input_std": (0.2,) * 3,
            },
            "finite",
        ),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    base = {"num_classes": 10, "in_channels": 3}
    with pytest.raises(ValueError, match=match):
        ContraNetConfig(**{**base, **kwargs})


def test_resnet_features_start_as_the_classifier_they_copy() -> None:
    """F(x) from a copied ResNet20 trunk, then the classifier's last layer, is the classifier on
    the [0, 1] image normalised as it was trained: the fixed input map is exact."""
    torch.manual_seed(0)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    classifier = CifarResNet(20, 7, width=8).eval()
    for bn in (m for m in classifier.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)  # non-trivial statistics are copied too
        bn.running_var.uniform_(0.5, 2.0)
    cfg = ContraNetConfig(
        num_classes=7, in_channels=3, dmm_backbone="resnet20", dmm_width=0.5,
        dmm_input_mean=list(mean), dmm_input_std=list(std),
    )  # fmt: skip
    assert cfg.dmm_input_mean == mean  # lists from a JSON config become tuples
    assert ContraNetConfig(**{**cfg.__dict__, "dmm_input_mean": list(mean)}) == cfg
    dmm = ContraNetDMM(cfg).eval()
    assert isinstance(dmm.f_real, ResNetFeatures) and dmm.feature_dim == 32
    # The normalisation is derived from the config, so it is not in the weights.
    assert not any(k.endswith(("scale", "shift")) for k in dmm.state_dict())
    dmm.f_real.load_classifier_trunk(classifier)
    images = torch.rand(4, 3, 32, 32)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        copied = classifier.linear(dmm.f_real(images * 2 - 1))
        torch.testing.assert_close(copied, classifier((images - m) / s), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="does not match the DMM's ResNet20 trunk"):
        dmm.f_real.load_classifier_trunk(CifarResNet(20, 7, width=16))
    with pytest.raises(ValueError, match="resnet20' backbone only"):
        build_feature_extractor("cnn", in_channels=3, width=1.0, mean=mean, std=std)


def test_config_presets_and_frozen() -> None:
    small = ContraNetConfig.small(10, 1)
    authors = ContraNetConfig.authors(43, 3)
    assert small.chunk_size == 20
    assert authors.self_attention and 4 * authors.g_ch == 384
    assert ContraNetDMM(small).feature_dim == 80
    assert ContraNetDMM(ContraNetConfig.authors(10, 1)).feature_dim == 1280
    with pytest.raises(AttributeError):
        small.g_ch = 8  # type: ignore[misc]


def test_authors_generator_param_count() -> None:
    gen = ContraNetGenerator(ContraNetConfig.authors(10, 3))
    assert gen.attention is not None
    assert torch.nn.utils.parametrize.is_parametrized(gen.blocks[0].conv1, "weight")
    assert abs(_params(gen) - 9.42e6) / 9.42e6 < 0.15


def test_small_preset_macs_per_image() -> None:
    torch.manual_seed(0)
    nets = build_contranet(ContraNetConfig.small(10, 3)).eval()
    x = torch.rand(1, 3, 32, 32)
    y = torch.tensor([3])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        z = nets["encoder"].encode(x)
        rebuilt = nets["generator"](z, y)
        nets["dis"](rebuilt, y)
        nets["dmm"](x, rebuilt, y)
    macs = counter.get_total_flops() / 2
    assert macs < 0.5e9


@pytest.mark.parametrize("channels_last", [False, True])
def test_encoder_whole_map_conv_matches_conv2d(channels_last: bool) -> None:
    torch.manual_seed(0)
    conv = _WholeMapConv(16, 8, 4)
    x = torch.randn(3, 16, 4, 4, requires_grad=True)
    want = F.conv2d(x, conv.weight, conv.bias)
    grad_want = torch.autograd.grad(want.sum(), x)[0]
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    xs = x.detach().contiguous(memory_format=layout)
    xs.requires_grad_(True)
    got = conv(xs)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), xs)[0], grad_want)
    # Other input sizes fall back to the ordinary convolution.
    big = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(conv(big), F.conv2d(big, conv.weight, conv.bias))
