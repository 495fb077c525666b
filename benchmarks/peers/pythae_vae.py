"""Peer VAE in Pythae: ``pythae.models.VAE`` trained by Pythae's own ``BaseTrainer``, evaluated by
importance sampling. Standalone: runs inside the ``pythae`` peer environment (pythae, torch, numpy;
it never imports ppl_vae).

    python pythae_vae.py --data D.npz --out R.json --epochs E --seed S --k K
                         [--batch-size 128] [--lr 1e-3] [--latent 50] [--hidden 400 ...] [--eval-batch 8]
                         [--nll-budget SECONDS]

Model:  z ~ N(0, I_L);  x | z ~ Bernoulli(sigmoid(decoder(z))),  decoder: L -> hidden... (ReLU) -> D.
Guide:  q(z | x) = N(loc, diag(exp(log_scale)^2)), encoder: D -> hidden... (ReLU) -> 2L = [loc, log_scale].
Pythae's VAE wants ``log_covariance`` (a log-variance) from the encoder: the custom encoder passes
``2 * log_scale``, so the network itself is the same [loc, log_scale] MLP as the other systems.
The decoder returns ``reconstruction = sigmoid(logits)`` as Pythae requires ([0, 1] probabilities).
Networks are plain ``torch.nn.Linear``/``ReLU`` stacks (PyTorch's default init), passed to
``VAE(VAEConfig(input_dim=(D,), latent_dim=L, reconstruction_loss="bce"), encoder, decoder)``.

Training: ``BaseTrainer`` + ``BaseTrainerConfig(num_epochs, learning_rate, per_device_train_batch_size,
optimizer_cls="Adam", seed, no_cuda=True)``, no eval set. Pythae's loss is the per-example mean over the
mini-batch of [BCE(sigmoid(logits), x) summed over pixels + analytic KL(q || p)] with one
reparameterized draw. Dynamic binarization: the training set is a ``BaseDataset`` subclass whose
``__getitem__`` returns a fresh ``torch.bernoulli`` draw each time an example is used (torch's global
RNG, which the trainer seeds with ``seed``); the trainer's DataLoader reshuffles every epoch and keeps
the last partial batch.

Evaluation (of the model after the last epoch): per held-out example x, with K draws z_k ~ q(z | x),
    log p(x) ~= logsumexp_k log w_k - log K,   log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x),
with log p(x | z) computed from the logits; its delta-method standard error sd(w) / (sqrt(K) mean(w))
(w = exp(log w - max log w), sd with ddof=1); and the ELBO estimate mean_k log w_k; see
:func:`summarize_log_weights`. Pythae's own ``model.get_nll(x_heldout, n_samples=K)`` is also run when
a timing probe on a few examples projects it to finish within ``--nll-budget`` seconds.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # contract.py, beside this file
from contract import checked, load_data, parser, run_settings, summarize_log_weights, write_result  # noqa: E402


def nll_batch_size(k, cap=1000):
    """The ``batch_size`` for Pythae's ``get_nll``: it draws ``(k // batch_size) * batch_size`` samples
    when k > batch_size, so use k itself up to ``cap``, else the largest divisor of k not above cap."""
    if k <= cap:
        return k
    return max(b for b in range(1, cap + 1) if k % b == 0)


def parse_args(argv=None):
    p = parser("Pythae peer VAE (train + importance-sampled log p(x))")
    p.add_argument(
        "--nll-budget",
        type=float,
        default=300.0,
        help="run Pythae's get_nll only if projected to take at most this many seconds (0: never)",
    )
    return checked(p, argv)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the trainer's per-batch progress bars
    import torch
    from torch import nn

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    import pythae
    from pythae.data.datasets import BaseDataset, DatasetOutput
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    x_train, x_heldout = load_data(args.data)
    n, d = x_train.shape
    m = x_heldout.shape[0]
    L, B, K = args.latent, args.batch_size, args.k

    def mlp(widths, d_in, d_out):
        layers, width = [], d_in
        for h in widths:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        return nn.Sequential(*layers, nn.Linear(width, d_out))

    class MLPEncoder(BaseEncoder):
        def __init__(self):
            BaseEncoder.__init__(self)
            self.net = mlp(args.hidden, d, 2 * L)

        def loc_log_scale(self, x):
            return self.net(x.reshape(x.shape[0], -1)).split(L, dim=-1)

        def forward(self, x):
            loc, log_scale = self.loc_log_scale(x)
            return ModelOutput(embedding=loc, log_covariance=2.0 * log_scale)

    class MLPDecoder(BaseDecoder):
        def __init__(self):
            BaseDecoder.__init__(self)
            self.net = mlp(list(reversed(args.hidden)), L, d)

        def logits(self, z):
            return self.net(z)

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    class DynamicallyBinarized(BaseDataset):
        """Grey levels in [0, 1]; every access returns a fresh Bernoulli draw."""

        def __getitem__(self, index):
            return DatasetOutput(data=torch.bernoulli(self.data[index]), labels=self.labels[index])

    class LossRecorder(TrainingCallback):
        def __init__(self):
            self.losses = []

        def on_log(self, training_config, logs, **kwargs):
            if "train_epoch_loss" in logs:
                self.losses.append(float(logs["train_epoch_loss"]))

    torch.manual_seed(args.seed)
    config = VAEConfig(input_dim=(d,), latent_dim=L, reconstruction_loss="bce")
    model = VAE(config, encoder=MLPEncoder(), decoder=MLPDecoder())
    train_set = DynamicallyBinarized(torch.from_numpy(x_train), torch.zeros(n))
    recorder = LossRecorder()
    notes = []

    with tempfile.TemporaryDirectory(prefix="pythae_peer_") as out_dir:
        trainer_config = BaseTrainerConfig(
            output_dir=out_dir,
            num_epochs=args.epochs,
            learning_rate=args.lr,
            per_device_train_batch_size=B,
            per_device_eval_batch_size=B,
            optimizer_cls="Adam",
            seed=args.seed,
            no_cuda=True,
            steps_saving=None,
            steps_predict=None,
        )
        t0 = time.perf_counter()
        trainer = BaseTrainer(
            model=model,
            train_dataset=train_set,
            eval_dataset=None,
            training_config=trainer_config,
            callbacks=[recorder],
        )
        trainer.train()
        train_seconds = time.perf_counter() - t0
    model = trainer.model.eval()
    best_epoch = int(np.argmin(recorder.losses)) + 1 if recorder.losses else None

    # --- our importance-sampling estimate, per example ---
    gen = torch.Generator().manual_seed(args.seed + 1_000_003)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    E = min(args.eval_batch, m)
    xh = torch.from_numpy(x_heldout)
    log_px, se, elbo = [], [], []
    t_eval0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, m, E):
            x = xh[start : start + E]  # (E, D)
            loc, log_scale = model.encoder.loc_log_scale(x)  # (E, L)
            eps = torch.randn((K,) + loc.shape, generator=gen)  # (K, E, L)
            z = loc + log_scale.exp() * eps
            logits = model.decoder.logits(z)  # (K, E, D)
            log_px_z = -nn.functional.binary_cross_entropy_with_logits(
                logits, x.expand_as(logits), reduction="none"
            ).sum(-1)
            log_pz = (-0.5 * z**2 - half_log_2pi).sum(-1)
            log_qz = (-0.5 * eps**2 - log_scale - half_log_2pi).sum(-1)
            lw = (log_px_z + log_pz - log_qz).T.numpy()  # (E, K)
            a, b, e = summarize_log_weights(lw)
            log_px.append(a), se.append(b), elbo.append(e)
    eval_seconds = time.perf_counter() - t_eval0
    log_px, se, elbo = (np.concatenate(v) for v in (log_px, se, elbo))

    # --- Pythae's own get_nll (one example at a time), if affordable ---
    pythae_nll = None
    bs = nll_batch_size(K)
    probe = min(m, 4)
    with torch.no_grad():
        torch.manual_seed(args.seed)
        t = time.perf_counter()
        probe_value = model.get_nll(xh[:probe], n_samples=K, batch_size=bs) if args.nll_budget > 0 else None
        projected = (time.perf_counter() - t) * m / probe
        if args.nll_budget > 0 and projected <= args.nll_budget:
            torch.manual_seed(args.seed)
            t = time.perf_counter()
            value = model.get_nll(xh, n_samples=K, batch_size=bs)
            pythae_nll = {
                "mean_log_px": float(value),
                "seconds": time.perf_counter() - t,
                "n_samples": (K // bs) * bs if K > bs else K,
                "batch_size": bs,
                "note": "pythae VAE.get_nll returns the mean over examples of the IS "
                "log p(x) (a log-likelihood despite its name); BCE on sigmoid "
                "probabilities (log clamped at -100 by torch)",
            }
        else:
            notes.append(
                f"Pythae get_nll skipped: projected {projected:.0f} s > budget "
                f"{args.nll_budget:.0f} s (probe on {probe} examples)"
            )
            if probe_value is not None:
                pythae_nll = {
                    "skipped": True,
                    "projected_seconds": projected,
                    "probe_examples": probe,
                    "probe_mean_log_px": float(probe_value),
                }

    if n % B:
        notes.append(f"last mini-batch of each epoch has {n % B} examples (kept by the DataLoader)")
    notes.append(
        "networks: torch.nn Linear/ReLU, PyTorch default init; encoder output [loc, log_scale], "
        "passed to Pythae as log_covariance = 2*log_scale"
    )
    notes.append(
        "evaluated the model after the last epoch (trainer.model); Pythae's saved final_model is "
        f"the epoch with the lowest training loss (epoch {best_epoch} of {args.epochs})"
    )
    notes.append(
        "train_seconds covers BaseTrainer construction (incl. its one-batch sanity check) and "
        "train() (incl. per-epoch deepcopy of the best model and the final save to a temp dir)"
    )

    result = {
        "system": "pythae",
        "versions": {
            "pythae": getattr(pythae, "__version__", None) or _dist_version("pythae"),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pydantic": _dist_version("pydantic"),
            "python": platform.python_version(),
        },
        "objective": (
            "Pythae VAE loss: BCE(sigmoid(logits), x) summed over pixels + analytic KL, "
            "1 reparameterized draw, mean over the mini-batch (per-example)"
        ),
        "binarization": "dynamic",
        "log_px": log_px.tolist(),
        "log_px_se": se.tolist(),
        "elbo": elbo.tolist(),
        "mean_log_px": float(log_px.mean()),
        "mean_elbo": float(elbo.mean()),
        "pythae_get_nll": pythae_nll,
        "train_seconds": train_seconds,
        "compile_seconds": 0.0,
        "eval_seconds": eval_seconds,
        "train_examples_per_s": args.epochs * n / train_seconds,
        "eval_samples_per_s": m * K / eval_seconds,
        "train_loss_per_example": recorder.losses,
        "best_train_epoch": best_epoch,
        **run_settings(args, n, m, d),
        "notes": notes,
    }
    write_result(args.out, "pythae", result)
    return 0


def _dist_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
