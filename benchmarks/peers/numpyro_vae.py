"""Peer VAE in NumPyro: trained with ``numpyro.infer.SVI`` + ``TraceMeanField_ELBO``, evaluated by
importance sampling. Standalone: runs inside the ``numpyro`` peer environment (numpyro, jax, numpy
only; it never imports ppl_vae or torch).

    python numpyro_vae.py --data D.npz --out R.json --epochs E --seed S --k K
                          [--batch-size 128] [--lr 1e-3] [--latent 50] [--hidden 400 ...] [--eval-batch 8]

Model:  z ~ N(0, I_L);  x | z ~ Bernoulli(logits = decoder(z)),  decoder: L -> hidden... (ReLU) -> D.
Guide:  q(z | x) = N(loc, diag(exp(log_scale)^2)), encoder: D -> hidden... (ReLU) -> 2L = [loc, log_scale].
Networks are ``jax.example_libraries.stax`` MLPs registered with ``numpyro.module`` (stax's default
init: Glorot-normal weights, N(0, 1e-6) biases).

Training: Adam(lr) (numpyro.optim.Adam: b1=0.9, b2=0.999, eps=1e-8), mini-batches of ``batch-size``
reshuffled every epoch, the last partial batch kept, each batch binarized afresh inside the jitted
step (x_bin ~ Bernoulli(x_train)). The loss is NumPyro's single-particle TraceMeanField_ELBO (analytic
KL(q || p), Monte Carlo reconstruction term) summed over the mini-batch -- the plate is the batch,
not scaled to the data-set size, as in NumPyro's own VAE example; Adam is invariant to that constant.

Evaluation: per held-out example x, with K draws z_k ~ q(z | x),
    log p(x) ~= logsumexp_k log w_k - log K,   log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x),
its delta-method Monte Carlo standard error sd(w) / (sqrt(K) mean(w)) (w = exp(log w - max log w),
sd with ddof=1), and the ELBO estimate mean_k log w_k; see :func:`summarize_log_weights`.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # contract.py, beside this file
from contract import checked, load_data, parser, run_settings, summarize_log_weights, write_result  # noqa: E402

XLA_SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def parse_args(argv=None):
    return checked(parser("NumPyro peer VAE (train + importance-sampled log p(x))"), argv)


def main(argv=None):
    args = parse_args(argv)
    # one thread, CPU only; must happen before jax is imported
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + XLA_SINGLE_THREAD).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import jax.numpy as jnp
    import jaxlib
    import numpyro
    import numpyro.distributions as dist
    from jax.example_libraries import stax
    from numpyro.infer import SVI, TraceMeanField_ELBO

    x_train, x_heldout = load_data(args.data)
    n, d = x_train.shape
    m = x_heldout.shape[0]
    L, B = args.latent, args.batch_size

    def mlp(widths, out):
        layers = []
        for h in widths:
            layers += [stax.Dense(h), stax.Relu]
        return stax.serial(*layers, stax.Dense(out))

    encoder_nn = mlp(args.hidden, 2 * L)
    decoder_nn = mlp(list(reversed(args.hidden)), d)

    def model(x):
        decode = numpyro.module("decoder", decoder_nn, (B, L))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([L]).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=decode(z)).to_event(1), obs=x)

    def guide(x):
        encode = numpyro.module("encoder", encoder_nn, (B, d))
        with numpyro.plate("data", x.shape[0]):
            out = encode(x)
            loc, log_scale = out[:, :L], out[:, L:]
            numpyro.sample("z", dist.Normal(loc, jnp.exp(log_scale)).to_event(1))

    svi = SVI(model, guide, numpyro.optim.Adam(step_size=args.lr), loss=TraceMeanField_ELBO())

    root = jax.random.PRNGKey(args.seed)
    init_key, bin_root, eval_root = jax.random.split(root, 3)
    x_train_dev = jnp.asarray(x_train)

    def step(state, x_all, idx, bin_key):
        xb = jax.random.bernoulli(bin_key, x_all[idx]).astype(jnp.float32)  # fresh binarization
        return svi.update(state, xb)

    shuffle_rng = np.random.default_rng(args.seed)
    notes = []
    t_train0 = time.perf_counter()
    state = svi.init(init_key, jnp.asarray(np.round(x_train[:B])))
    init_seconds = time.perf_counter() - t_train0
    # compile the step ahead of time for the full batch and the last partial batch (timed)
    t_c = time.perf_counter()
    jitted = jax.jit(step)
    batch_sizes = sorted({min(B, n)} | ({n % B} if n % B else set()))
    compiled = {}
    for bs in batch_sizes:
        idx = jnp.zeros((bs,), dtype=jnp.int32)
        compiled[bs] = jitted.lower(state, x_train_dev, idx, bin_root).compile()
    compile_seconds = time.perf_counter() - t_c

    epoch_losses = []
    step_no = 0
    for epoch in range(args.epochs):
        perm = shuffle_rng.permutation(n).astype(np.int32)
        losses = []
        for start in range(0, n, B):
            idx = jnp.asarray(perm[start : start + B])
            state, loss = compiled[idx.shape[0]](state, x_train_dev, idx, jax.random.fold_in(bin_root, step_no))
            losses.append(loss)
            step_no += 1
        # per-example negative ELBO of the epoch (losses are sums over each batch)
        epoch_losses.append(float(jnp.sum(jnp.stack(losses))) / n)
    jax.block_until_ready(state)
    train_seconds = time.perf_counter() - t_train0

    params = svi.get_params(state)
    enc_params, dec_params = params["encoder$params"], params["decoder$params"]
    _, enc_apply = encoder_nn
    _, dec_apply = decoder_nn
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    K, E = args.k, min(args.eval_batch, m)

    @jax.jit
    def log_weights(x, key):
        """x (E, D) binary -> log-weights (E, K)."""
        out = enc_apply(enc_params, x)
        loc, log_scale = out[:, :L], out[:, L:]
        eps = jax.random.normal(key, (K,) + loc.shape)  # (K, E, L)
        z = loc + jnp.exp(log_scale) * eps
        logits = dec_apply(dec_params, z.reshape(-1, L)).reshape(K, x.shape[0], d)
        log_px_z = jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)  # Bernoulli(logits)
        log_pz = jnp.sum(-0.5 * z**2 - half_log_2pi, axis=-1)
        log_qz = jnp.sum(-0.5 * eps**2 - log_scale - half_log_2pi, axis=-1)
        return (log_px_z + log_pz - log_qz).T  # (E, K)

    t_eval0 = time.perf_counter()
    log_weights = log_weights.lower(jnp.zeros((E, d), jnp.float32), eval_root).compile()
    eval_compile_seconds = time.perf_counter() - t_eval0
    log_px, se, elbo = [], [], []
    for c, start in enumerate(range(0, m, E)):
        chunk = x_heldout[start : start + E]
        rows = chunk.shape[0]
        if rows < E:  # pad the last chunk so the jitted function keeps one shape
            chunk = np.concatenate([chunk, np.zeros((E - rows, d), np.float32)])
        lw = np.asarray(log_weights(jnp.asarray(chunk), jax.random.fold_in(eval_root, c)))[:rows]
        a, b, e = summarize_log_weights(lw)
        log_px.append(a), se.append(b), elbo.append(e)
    eval_seconds = time.perf_counter() - t_eval0
    log_px, se, elbo = (np.concatenate(v) for v in (log_px, se, elbo))

    if n % B:
        notes.append(f"last mini-batch of each epoch has {n % B} examples (kept)")
    notes.append("networks: jax.example_libraries.stax Dense/Relu; init Glorot-normal weights, N(0,1e-6) biases")
    notes.append("encoder output is [loc, log_scale] (scale = exp(log_scale))")
    notes.append(
        "train_seconds includes svi.init (init_seconds) and the ahead-of-time jit compilation "
        "of the update step (compile_seconds); eval_seconds includes compiling the "
        "log-weight function (eval_compile_seconds)"
    )

    result = {
        "system": "numpyro",
        "versions": {
            "numpyro": numpyro.__version__,
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "objective": (
            "TraceMeanField_ELBO (1 particle; analytic KL, MC reconstruction), "
            "summed over the mini-batch (not scaled to N)"
        ),
        "binarization": "dynamic",
        "log_px": log_px.tolist(),
        "log_px_se": se.tolist(),
        "elbo": elbo.tolist(),
        "mean_log_px": float(log_px.mean()),
        "mean_elbo": float(elbo.mean()),
        "train_seconds": train_seconds,
        "compile_seconds": compile_seconds,
        "init_seconds": init_seconds,
        "loop_seconds": train_seconds - init_seconds - compile_seconds,
        "eval_seconds": eval_seconds,
        "eval_compile_seconds": eval_compile_seconds,
        "train_examples_per_s": args.epochs * n / train_seconds,
        "eval_samples_per_s": m * K / eval_seconds,
        "train_loss_per_example": epoch_losses,
        **run_settings(args, n, m, d),
        "steps": step_no,
        "notes": notes,
    }
    write_result(args.out, "numpyro", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
