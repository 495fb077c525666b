"""The convolutional and residual networks (ppl_vae.networks) and every guide family and likelihood on
top of them."""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

import ppl_vae
from ppl_vae.errors import ConfigError
from ppl_vae.guides import GUIDES, MLPEncoder, encoder_network
from ppl_vae.infer.fit import fit
from ppl_vae.models import LIKELIHOODS, MLPDecoder, decoder_network
from ppl_vae.networks import (
    ConvDecoder,
    ConvEncoder,
    ResidualBlock,
    conv_geometry,
    measure,
    resolve_network,
)
from ppl_vae.vae import VAE

IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 12, 20)]
#: The prior each guide family is paired with (its latent space).
PRIOR_FOR_GUIDE = {"power-spherical": "sphere", "dirichlet": "dirichlet"}


# -- shapes, layout and geometry ------------------------------------------------------------------


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("shape", IMAGE_SHAPES)
def test_encoder_and_decoder_shapes_with_leading_batch_dims(shape, residual):
    encoder = ConvEncoder(shape, (16,), 6, residual=residual)
    decoder = ConvDecoder(3, (16,), shape, 2, residual=residual)
    x = torch.rand(2, 5, *shape)
    out = encoder(x)
    assert out.shape == (2, 5, 6)
    # each example is encoded on its own: the leading dims only batch
    assert torch.allclose(out.reshape(10, 6), encoder(x.reshape(10, *shape)), atol=1e-5)
    assert torch.allclose(out[1, 3], encoder(x[1, 3]), atol=1e-5)
    z = torch.randn(4, 2, 3)
    params = decoder(z)
    assert params.shape == (4, 2, 2 * math.prod(shape))
    assert torch.allclose(params[3, 1], decoder(z[3, 1]), atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 12, 20), (2, 13, 9), (1, 5, 6)])
def test_decoder_output_is_in_the_likelihoods_layout(shape):
    """Channel j * C + c of the last layer is parameter j of channel c: (..., k, C, H, W) flattened."""
    k, channels = 3, shape[0]
    decoder = ConvDecoder(2, (), shape, k)
    last = decoder.body[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([10.0 * j + c for j in range(k) for c in range(channels)]))
    params = decoder(torch.randn(7, 2)).reshape(7, k, *shape)
    expected = torch.tensor([[10.0 * j + c for c in range(channels)] for j in range(k)])
    assert torch.equal(params, expected[None, :, :, None, None].expand_as(params))


def test_the_geometry_halves_to_at_least_four_pixels():
    assert conv_geometry((1, 28, 28)).sizes == ((14, 14), (7, 7), (4, 4))
    assert conv_geometry((1, 28, 28)).channels == (32, 64, 128)
    assert conv_geometry((3, 32, 32)).sizes == ((16, 16), (8, 8), (4, 4))
    assert conv_geometry((1, 8, 8)).sizes == ((4, 4),)
    assert conv_geometry((3, 12, 20)).sizes == ((6, 10),)
    small = conv_geometry((1, 6, 9))  # too small to halve: one stride-1 stage
    assert small.sizes == ((6, 9),) and not small.downsample
    assert conv_geometry((1, 28, 28), channels=(8, 8)).sizes == ((14, 14), (7, 7))
    with pytest.raises(ValueError, match="1 to 1 stages"):
        conv_geometry((1, 8, 8), channels=(8, 8))
    with pytest.raises(ValueError, match="needs images"):
        conv_geometry((1, 3, 8))


def test_encoder_joins_an_appended_vector_after_the_convolutions():
    encoder = ConvEncoder((1, 8, 8), (16,), 4, extra_features=3)
    x, label = torch.rand(5, 64), torch.eye(3)[[0, 1, 2, 0, 1]]
    out = encoder(torch.cat([x, label], -1))
    assert out.shape == (5, 4) and encoder.input_shape == (67,)
    other = encoder(torch.cat([x, torch.eye(3)[[1, 1, 1, 1, 1]]], -1))
    assert not torch.allclose(out[0], other[0]) and torch.allclose(out[1], other[1])


def test_a_residual_block_starts_as_the_identity():
    block = ResidualBlock(4)
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(block(x), x)
    resnet = ConvEncoder((1, 16, 16), (), 2, residual=True)
    assert sum(isinstance(m, ResidualBlock) for m in resnet.modules()) == 2


def test_measure_counts_multiply_adds_and_activations_without_allocating():
    encoder = ConvEncoder((1, 8, 8), (), 4, channels=(2,))  # conv 1 -> 2 at 4 x 4, then linear 32 -> 4
    work = measure(encoder, (1, 8, 8))
    assert work.parameters == sum(p.numel() for p in encoder.parameters()) == (9 * 2 + 2) + (32 * 4 + 4)
    assert work.multiply_adds == 2 * 16 * 9 + 32 * 4
    assert work.activations == 2 * 16 + 4
    decoder = ConvDecoder(3, (), (1, 8, 8), 1, channels=(2,))  # linear 3 -> 32, transposed conv 2 -> 1 at 8 x 8
    assert measure(decoder, (3,)).multiply_adds == 3 * 32 + (2 * 16) * 1 * 16
    with torch.device("meta"):
        big = ConvEncoder((3, 2000, 2000), (256,), 16)
    assert measure(big, (3, 2000, 2000)).activations > 3 * 10**7  # 32 channels at 1000 x 1000 first


# -- choosing the network -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((1, 8, 8), "mlp"),  # the embedded digits: unchanged
        ((1, 12, 20), "mlp"),  # 240 grey pixels
        ((1, 16, 16), "conv"),
        ((1, 28, 28), "conv"),
        ((3, 8, 8), "conv"),  # colour
        ((3, 2, 2), "mlp"),  # too small for convolutions
        ((300,), "mlp"),  # a table
        ((20, 20), "mlp"),  # not (C, H, W)
    ],
)
def test_auto_chooses_conv_for_images_of_16x16_or_colour(shape, expected):
    assert resolve_network("auto", shape) == expected
    assert VAE(shape, 2, (4,), likelihood="gaussian", network="auto").network == expected


def test_convolutions_on_a_table_and_unknown_networks_are_refused_in_one_line():
    for network in ("conv", "resnet"):
        with pytest.raises(ConfigError, match="--network mlp") as error:
            VAE((300,), likelihood="gaussian", network=network)
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="unknown network 'cnn'"):
        VAE((1, 8, 8), network="cnn")
    with pytest.raises(ValueError, match="unknown network"):
        encoder_network("cnn", (1, 8, 8), (), 2)


def test_the_default_digits_vae_is_the_same_mlp_as_before():
    """Default network ("mlp") and "auto" on 8 x 8 build exactly MLPEncoder then MLPDecoder from the seed."""
    torch.manual_seed(0)
    encoder = MLPEncoder((1, 8, 8), (256, 128), 16)
    decoder = MLPDecoder(8, (128, 256), 64)
    for network in ("mlp", "auto"):
        torch.manual_seed(0)
        vae = VAE((1, 8, 8), network=network)
        assert vae.spec["network"] == vae.spec["decoder"] == "mlp"
        for mine, theirs in ((vae.encoder.encoder, encoder), (vae.decoder, decoder)):
            assert type(mine) is type(theirs)
            assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()))


def test_a_users_own_decoder_stays_possible_beside_a_conv_encoder():
    decoder = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.ReLU(), torch.nn.Linear(32, 256))
    vae = VAE((1, 16, 16), 3, (16,), network="conv", decoder=decoder)
    assert vae.decoder is decoder and isinstance(vae.encoder.encoder, ConvEncoder)
    assert vae.spec["decoder"] is None and vae.spec["network"] == "conv"
    assert vae.sample(2).shape == (2, 1, 16, 16)


# -- every guide family and likelihood on top ------------------------------------------------------


def _svi_steps(vae, x, steps=3, **kwargs):
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    before = [p.detach().clone() for p in vae.parameters()]
    losses = [svi.step(x, **kwargs) for _ in range(steps)]
    assert all(math.isfinite(loss) for loss in losses)
    changed = sum(not torch.equal(a, b) for a, b in zip(before, vae.parameters()))
    return losses, changed, len(before)


@pytest.mark.parametrize("network", ["conv", "resnet"])
@pytest.mark.parametrize("guide", list(GUIDES))
def test_every_guide_family_trains_on_conv_networks(guide, network):
    prior = PRIOR_FOR_GUIDE.get(guide, "normal")
    vae = VAE((3, 8, 8), 3, (8,), prior=prior, guide=guide, network=network)
    assert isinstance(vae.encoder.encoder, ConvEncoder) and isinstance(vae.decoder, ConvDecoder)
    assert (sum(isinstance(m, ResidualBlock) for m in vae.modules()) > 0) == (network == "resnet")
    x = torch.bernoulli(torch.rand(6, 3, 8, 8))
    _, changed, total = _svi_steps(vae, x)
    assert changed == total  # every parameter (encoder, decoder, flows) received a gradient step
    assert vae.encode(x)[0].shape == (6, 3) and vae.reconstruct(x).shape == x.shape


def _data_of_kind(kind: str, shape) -> torch.Tensor:
    u = torch.rand(5, *shape)
    return {
        "binary": lambda: torch.bernoulli(u),
        "unit": lambda: u.clamp(0.01, 0.99),
        "8bit": lambda: torch.round(u * 255) / 255,
        "real": lambda: torch.randn(5, *shape),
        "count": lambda: torch.poisson(3 * u),
    }[kind]()


@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_every_likelihood_trains_on_a_conv_decoder(name):
    shape = (2, 8, 8)
    vae = VAE(shape, 2, (8,), likelihood=name, network="conv")
    k = vae.likelihood.params_per_feature
    assert vae.decoder(torch.randn(4, 2)).shape == (4, k * math.prod(shape))
    x = _data_of_kind(vae.likelihood.data_kind, shape)
    vae.likelihood.check_support(x)
    losses, changed, _ = _svi_steps(vae, x, steps=2)
    assert changed > 0
    assert vae.sample(3).shape == (3, *shape)


@pytest.mark.parametrize(
    "prior, labels",
    [
        ("semi-supervised:3", torch.tensor([0, 1, 2, -1, -1, -1, 0, -1])),
        ("conditional:3", torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])),
        ("mixture:3:amortized", None),
    ],
)
def test_structured_priors_with_labels_appended_train_on_a_conv_encoder(prior, labels):
    vae = VAE((1, 16, 16), 2, (8,), prior=prior, network="conv")
    assert isinstance(vae.encoder.encoder, ConvEncoder) and vae.encoder.encoder.extra_features == 3
    x = torch.bernoulli(torch.rand(8, 1, 16, 16))
    heldout_labels = None if labels is None else labels[:4].clamp(min=0)
    result = fit(vae, x, x[:4], epochs=2, batch_size=8, progress=False, labels=labels, heldout_labels=heldout_labels)
    assert all(math.isfinite(r["heldout_elbo"]) for r in result.history)
    c = None if labels is None else labels.clamp(min=0)
    assert vae.reconstruct(x, c).shape == x.shape


def test_the_vamp_prior_encodes_its_pseudo_inputs_with_the_conv_encoder():
    vae = VAE((3, 16, 16), 2, (8,), prior="vamp", likelihood="continuous-bernoulli", network="conv")
    prior = vae.prior_distribution()
    assert prior.batch_shape == () and prior.event_shape == (2,)
    x = torch.rand(6, 3, 16, 16).clamp(0.01, 0.99)
    before = vae.prior.pseudo_logits.detach().clone()
    _svi_steps(vae, x)
    assert not torch.equal(before, vae.prior.pseudo_logits)  # the pseudo-inputs learn through the encoder


def test_decoder_network_builds_each_network():
    assert isinstance(decoder_network("mlp", 2, (4,), (1, 8, 8), 2), MLPDecoder)
    conv = decoder_network("resnet", 2, (4,), (1, 8, 8), 2)
    assert isinstance(conv, ConvDecoder) and any(isinstance(m, ResidualBlock) for m in conv.modules())


def test_conv_on_28x28_digits_lowers_the_training_loss():
    split = ppl_vae.load_dataset("digits", image_size=28)
    pyro.set_rng_seed(0)
    vae = VAE(split.data_shape, 4, (32,), network="conv")
    result = fit(vae, split.train[:256], epochs=6, batch_size=64, lr=3e-3, seed=0, progress=False)
    first, last = result.history[0]["train_elbo"], result.history[-1]["train_elbo"]
    # about -540 nats at the start (784 coin flips); training must gain a large share of that
    assert last > first + 100, (first, last)
