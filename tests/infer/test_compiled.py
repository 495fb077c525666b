"""The recorded and compiled training step (ppl_vae.infer.compiled) against the eager step.

The recorded step replays the tensor operations that Pyro's ELBO and autograd ran, so it must give the
eager numbers bit for bit: the same losses and the same parameters after several steps, for every
registered prior, guide, likelihood and objective it accepts (the first step of each pair is the eager,
validated one; the rest come from the recording). Both sides use the fused Adam the recorded path uses,
so that any difference is the step's. What it does not accept runs eager steps and says why (enumerated
models among them: Pyro's sum over enumerated values branches on the values of tensors).
"""

from __future__ import annotations

import pyro
import pytest
import torch

from ppl_vae import VAE, fit
from ppl_vae.catalog import COMPILE
from ppl_vae.guides import GUIDES
from ppl_vae.infer import compiled
from ppl_vae.infer.objectives import check_compatible
from ppl_vae.infer.step import TrainStep
from ppl_vae.models import LIKELIHOODS, PRIORS

SHAPE = (1, 4, 4)
STEPS = 4
STRUCTURED = {"mixture", "semi-supervised", "conditional", "covariates", "groups"}


def _data(kind: str, n: int, shape=SHAPE) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    u = torch.rand((n, *shape), generator=g)
    return {
        "binary": (u > 0.6).float(),
        "unit": u.clamp(0.02, 0.98),
        "real": torch.randn((n, *shape), generator=g),
        "8bit": torch.floor(u * 256).clamp(max=255) / 255,
        "count": torch.poisson(3 * u),
    }[kind]


def _case(prior="normal", guide="auto", likelihood="bernoulli", elbo="auto", shape=SHAPE, c=None, enumerated=0):
    return {
        "vae": {"prior": prior, "guide": guide, "likelihood": likelihood},
        "elbo": elbo,
        "shape": shape,
        "c": c,
        "enumerated": enumerated,
    }


def _cases():
    for prior in sorted(set(PRIORS) - STRUCTURED):
        yield f"prior-{prior}", _case(prior=prior)
    yield "prior-mixture:3", _case(prior="mixture:3", enumerated=1)
    yield (
        "prior-semi-supervised:3",
        _case(prior="semi-supervised:3", c=torch.tensor([0, -1, 2, -1, 1, 0, -1, 2]), enumerated=1),
    )
    yield "prior-conditional:3", _case(prior="conditional:3", c=torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    yield "prior-covariates:2", _case(prior="covariates:2", likelihood="gaussian", shape=(3,), c=torch.randn(8, 2))
    yield (
        "prior-groups:3",
        _case(prior="groups:3", likelihood="gaussian", shape=(3,), c=torch.tensor([0, 1, 2] * 2 + [0, 1])),
    )
    for guide in sorted(GUIDES):
        prior = {"power-spherical": "sphere", "dirichlet": "dirichlet"}.get(guide, "normal")
        yield f"guide-{guide}", _case(prior=prior, guide=guide)
    for likelihood in sorted(LIKELIHOODS):
        yield f"likelihood-{likelihood}", _case(likelihood=likelihood)
    for elbo in ("trace", "meanfield"):
        yield f"elbo-{elbo}", _case(elbo=elbo)


CASES = dict(_cases())


def _run(case: dict, mode: str):
    """Losses of STEPS steps and the parameters after them, from a fresh VAE with fixed seeds."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = VAE(case["shape"], latent_dim=2, hidden_dims=(8,), **case["vae"])
    step = TrainStep(vae, 1e-2, case["elbo"], enumerated=case["enumerated"], compile=mode)
    step.optimizer.fused = True  # the eager side too: the difference must be the step's
    kind = vae.likelihood.data_kind
    x = _data(kind, 8, case["shape"])
    kwargs = {"c": case["c"]} if case["c"] is not None else {}
    pyro.set_rng_seed(1)
    losses = [step(x, num_data=40, beta=1.0, **kwargs) for _ in range(STEPS)]
    return losses, [p.detach().clone() for _, p in step.named], step


def _compatible(case: dict) -> bool:
    pyro.set_rng_seed(0)
    try:
        vae = VAE(case["shape"], latent_dim=2, hidden_dims=(8,), **case["vae"])
        x = _data(vae.likelihood.data_kind, 2, case["shape"])
        check_compatible(vae, x, elbo=case["elbo"], c=None if case["c"] is None else case["c"][:2])
    except Exception:
        return False
    return True


@pytest.mark.parametrize("name", list(CASES))
def test_the_recorded_step_gives_the_eager_numbers_bit_for_bit(name):
    case = CASES[name]
    if not _compatible(case):
        pytest.skip("the combination is refused before training")
    eager_losses, eager_params, _ = _run(case, "off")
    losses, params, step = _run(case, "trace")
    path = step.describe()
    if case["enumerated"]:
        # Pyro's compute_expectation branches on `(prob > 0).all()`, a value fake tensors do not have:
        # enumerated models are refused at recording and run eager steps, with the same numbers.
        assert path["path"] == "eager" and "recording the step failed" in path["eager_reason"], path
        assert losses == eager_losses
        return
    assert path["path"] == "recorded", path
    assert path["graphs"][0]["steps"] == STEPS - 1  # the first, validated step is eager
    assert losses == eager_losses
    assert all(torch.equal(a, b) for a, b in zip(params, eager_params))


def test_every_registered_prior_guide_and_likelihood_is_covered():
    """A new registry entry must join the equality test above."""
    covered = {c["vae"]["prior"].split(":")[0] for c in CASES.values()}
    assert covered == set(PRIORS)
    assert {c["vae"]["guide"] for c in CASES.values()} >= set(GUIDES)
    assert {c["vae"]["likelihood"] for c in CASES.values()} == set(LIKELIHOODS)


def test_the_compiled_step_draws_the_eager_draws_and_agrees_to_float_rounding():
    """torch.compile (Inductor) of the recording: same loss at the same draws, the same gradients and
    Adam update to float rounding (the update compared where the gradient is clearly non-zero: Adam's
    first step is lr * sign(g), which rounding may flip for a gradient at the level of rounding)."""
    pyro.set_rng_seed(0)
    vae = VAE(SHAPE, latent_dim=2, hidden_dims=(8,))
    x = _data("binary", 8)
    eager = TrainStep(vae, 1e-2, "auto", compile="off")
    built = TrainStep(vae, 1e-2, "auto", compile="on")
    built.steps = 1  # past the validated first step: the compiled graph from the start
    start = [p.detach().clone() for _, p in eager.named]
    for seed in (5, 6):  # twice: the second call runs the compiled code without compiling
        pyro.set_rng_seed(seed)
        loss_c, grads_c, finite = built.captured(x, {"num_data": 40, "beta": 1.0})
        assert bool(finite)
        pyro.set_rng_seed(seed)
        loss_e = eager.loss.differentiable_loss(vae.model, vae.guide, x, num_data=40, beta=1.0)
        grads_e = torch.autograd.grad(loss_e, [p for _, p in eager.named])
        assert loss_c.item() == pytest.approx(loss_e.item(), rel=1e-5)
        for gc, ge in zip(grads_c, grads_e):
            assert torch.allclose(gc, ge, rtol=1e-4, atol=1e-4 * float(ge.abs().max()))
    assert built.describe()["path"] == "compiled"
    assert built.describe()["graphs"][0]["compile_seconds"] > 0
    for p, s in zip([p for _, p in eager.named], start):
        assert torch.equal(p, s)  # nothing above stepped the optimizer


def _fit(mode, data, **kwargs):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = VAE(SHAPE, latent_dim=2, hidden_dims=(8,))
    return fit(vae, data, epochs=3, batch_size=8, progress=False, compile=mode, **kwargs)


def test_fit_records_the_path_it_took():
    data = _data("binary", 20)  # batches of 8, 8 and 4: two shapes recorded
    whole = _fit("trace", data)
    assert whole.step["path"] == "recorded"
    assert sorted(g["shape"][0] for g in whole.step["graphs"]) == [4, 8]
    assert sum(g["steps"] for g in whole.step["graphs"]) == 3 * 3 - 1  # all but the validated first step


def test_a_stopped_recorded_run_resumes_exactly(tmp_path):
    from ppl_vae.errors import TrainingInterrupted

    data = _data("binary", 20)
    whole = _fit("trace", data)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = VAE(SHAPE, latent_dim=2, hidden_dims=(8,))
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(vae, data, epochs=3, batch_size=8, progress=False, compile="trace", stop=lambda steps: steps == 4)
    resumed = fit(vae, data, epochs=3, batch_size=8, progress=False, compile="trace", resume=stopped.value.state)
    assert resumed.losses == whole.losses
    assert all(torch.equal(a, b) for a, b in zip(vae.parameters(), whole.vae.parameters()))


def test_auto_decides_from_the_planned_steps_only():
    data = _data("binary", 20)
    short = _fit("auto", data)  # 3 epochs: far below the recording threshold
    assert short.step["path"] == "eager" and short.step["graphs"] == []
    vae = VAE(SHAPE, latent_dim=2, hidden_dims=(8,))
    step = TrainStep(vae, 1e-2, compile="auto", planned={8: compiled.AUTO_RECORD_STEPS, 4: 999})
    assert step.captured._record_wanted(8) and not step.captured._record_wanted(4)
    assert not step.captured._compile_wanted(8)
    step.captured.planned = {8: compiled.AUTO_COMPILE_EXAMPLES // 8, 4: compiled.AUTO_COMPILE_EXAMPLES // 4 - 1}
    assert step.captured._compile_wanted(8) and not step.captured._compile_wanted(4)
    conv = VAE((1, 16, 16), latent_dim=2, hidden_dims=(8,), network="conv")
    step = TrainStep(conv, 1e-2, compile="auto", planned={8: compiled.AUTO_COMPILE_EXAMPLES})
    assert step.captured._record_wanted(8) and not step.captured._compile_wanted(8)  # convolutions: no gain


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"elbo": "iwae", "num_particles": 2}, "RenyiELBO"),
        ({"kl_schedule": "warmup:2"}, "KL schedule"),
    ],
)
def test_what_is_not_recorded_runs_eager_and_says_why(kwargs, reason, capsys):
    result = _fit("on", _data("binary", 16), **kwargs)
    assert result.step["path"] == "eager" and reason in result.step["eager_reason"]
    err = capsys.readouterr().err
    assert err.count("compile: eager steps") == 1 and reason in err


class _ReadsParam(torch.nn.Module):
    """A prior whose scale is a pyro.param: the recording would freeze it."""

    def forward(self):
        import pyro.distributions as dist

        scale = pyro.param("prior_scale", torch.ones(2), constraint=dist.constraints.positive)
        return dist.Normal(torch.zeros(2), scale).to_event(1)


class _BranchesOnValues(torch.nn.Module):
    """A prior that looks at a tensor's value: fake tensors have none."""

    def __init__(self):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.zeros(2))

    def forward(self):
        import pyro.distributions as dist

        loc = self.loc if float(self.loc.sum()) < 1e6 else -self.loc
        return dist.Normal(loc, torch.ones(2)).to_event(1)


@pytest.mark.parametrize(
    "prior, reason", [(_ReadsParam, "pyro.param"), (_BranchesOnValues, "recording the step failed")]
)
def test_programs_the_recording_cannot_stand_for_run_eager_with_the_eager_numbers(prior, reason):
    def run(mode):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = VAE(SHAPE, latent_dim=2, hidden_dims=(8,), prior=prior())
        said = []
        step = TrainStep(vae, 1e-2, "trace", compile=mode)
        step.log = said.append
        x = _data("binary", 8)
        pyro.set_rng_seed(1)
        losses = [step(x, num_data=8, beta=1.0) for _ in range(3)]
        return losses, step, said

    eager, _, _ = run("off")
    losses, step, said = run("trace")
    assert step.describe()["path"] == "eager" and reason in step.describe()["eager_reason"]
    assert len(said) == 1 and reason in said[0]
    assert losses == pytest.approx(eager, rel=1e-6)


def test_the_catalog_lists_the_choices():
    assert tuple(COMPILE) == compiled.COMPILE_CHOICES


def test_pyro_helpers_are_restored_after_recording():
    import pyro.infer.trace_elbo as trace_elbo

    before = (trace_elbo.torch_item, trace_elbo.warn_if_nan)
    with compiled.traceable_pyro():
        assert trace_elbo.torch_item is not before[0]
    assert (trace_elbo.torch_item, trace_elbo.warn_if_nan) == before


def test_a_non_finite_gradient_from_the_graph_is_refused_and_named():
    """The finiteness check runs inside the graph; the update is skipped and the parameters named."""
    pyro.set_rng_seed(0)
    vae = VAE(SHAPE, latent_dim=2, hidden_dims=(8,))
    step = TrainStep(vae, 1e-2, compile="trace")
    x = _data("binary", 8)
    for _ in range(2):
        step(x, num_data=8, beta=1.0)
    assert step.describe()["graphs"][0]["steps"] == 1 and step.optimizer.nonfinite == []
    weight = next(p for n, p in step.named if "decoder" in n and p.dim() == 2)
    with torch.no_grad():
        weight[0, 0] = float("inf")
    before = [p.detach().clone() for _, p in step.named]
    step(x, num_data=8, beta=1.0)
    assert step.describe()["graphs"][0]["steps"] == 2  # the recorded graph ran
    assert step.optimizer.nonfinite and set(step.optimizer.nonfinite) <= {n for n, _ in step.named}
    assert all(torch.equal(a.nan_to_num(), p.nan_to_num()) for a, (_, p) in zip(before, step.named))  # not stepped


def test_a_failing_compile_falls_back_to_the_recorded_graph_with_one_line(monkeypatch):
    """No C++ compiler, or anything else torch.compile trips on: the recorded graph takes the step."""

    def broken(fn, **options):
        def run(*args):
            raise RuntimeError("no C++ compiler found\nsecond line")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    pyro.set_rng_seed(0)
    vae = VAE(SHAPE, latent_dim=2, hidden_dims=(8,))
    step = TrainStep(vae, 1e-2, compile="on")
    said = []
    step.log = said.append
    x = _data("binary", 8)
    losses = [step(x, num_data=8, beta=1.0) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert step.describe()["path"] == "recorded" and step.describe()["graphs"][0]["steps"] == 2
    assert said == ["compile: torch.compile failed (RuntimeError: no C++ compiler found); recorded steps"]


def test_a_parameter_the_loss_does_not_reach_keeps_no_gradient_as_eagerly():
    """Eagerly an unused parameter has no gradient and Adam leaves it (and its state) alone; the
    recorded step must not turn that into a zero gradient that Adam would count as a step."""

    def run(mode):
        pyro.set_rng_seed(0)
        vae = VAE(SHAPE, latent_dim=2, hidden_dims=(8,))
        vae.decoder.register_parameter("spare", torch.nn.Parameter(torch.ones(3)))
        step = TrainStep(vae, 1e-2, compile=mode)
        step.optimizer.fused = True
        x = _data("binary", 8)
        pyro.set_rng_seed(1)
        losses = [step(x, num_data=8, beta=1.0) for _ in range(3)]
        spare = vae.decoder.spare
        return losses, spare, step.optimizer._optimizer.state.get(spare, {}), step

    eager, spare_e, state_e, _ = run("off")
    losses, spare, state, step = run("trace")
    assert step.describe()["path"] == "recorded" and losses == eager
    assert spare.grad is None and spare_e.grad is None
    assert torch.equal(spare, torch.ones(3)) and state == state_e == {}
