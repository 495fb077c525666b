"""NumPyro's jitted SVI step, timed on request: the peer of the training-step benchmark.

Runs inside the NumPyro peer environment (``python -m benchmarks.peers setup numpyro``), one thread,
as a long-lived process so that its blocks interleave with ppl_vae's in one benchmark run
(:class:`benchmarks.run.PeerStep`). The model and guide are the 784-400-50-style MLP VAE of the
quality peer (``numpyro_vae.py``): z ~ N(0, I), x | z ~ Bernoulli(logits = decoder(z)), q(z | x) =
N(loc(x), diag scale(x)^2), stax MLPs; the loss is ``Trace_ELBO`` (a Monte Carlo KL, like the
hand-written reference) with the data plate scaled to ``num_data``; the update is
``jax.jit(svi.update)``, compiled before the first block (the compile time is reported apart).

Protocol on standard input/output, one line each:

    start:  prints  {"ready": true, "compile_seconds": s, "versions": {...}}
    "N"  -> runs N steps over 8 fixed random binary batches, waits for the result, prints {"seconds": s}
    "quit" or end of input -> exits

    python numpyro_step.py --data-dim 784 --latent 50 --hidden 400 --batch 128 --num-data 60000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

XLA_SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dim", type=int, default=784)
    p.add_argument("--latent", type=int, default=50)
    p.add_argument("--hidden", type=int, action="append", default=None)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--num-data", type=int, default=60000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.hidden = args.hidden or [400]
    return args


def build(args):
    """The jitted update, its state and 8 batches."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from jax.example_libraries import stax
    from numpyro.infer import SVI, Trace_ELBO

    d, L, B = args.data_dim, args.latent, args.batch

    def mlp(widths, out):
        layers = []
        for h in widths:
            layers += [stax.Dense(h), stax.Relu]
        return stax.serial(*layers, stax.Dense(out))

    encoder_nn, decoder_nn = mlp(args.hidden, 2 * L), mlp(list(reversed(args.hidden)), d)

    def model(x):
        decode = numpyro.module("decoder", decoder_nn, (B, L))
        with numpyro.plate("data", args.num_data, subsample_size=x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([L]).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=decode(z)).to_event(1), obs=x)

    def guide(x):
        encode = numpyro.module("encoder", encoder_nn, (B, d))
        with numpyro.plate("data", args.num_data, subsample_size=x.shape[0]):
            out = encode(x)
            numpyro.sample("z", dist.Normal(out[:, :L], jnp.exp(out[:, L:])).to_event(1))

    svi = SVI(model, guide, numpyro.optim.Adam(step_size=args.lr), loss=Trace_ELBO())
    keys = jax.random.split(jax.random.PRNGKey(args.seed), 9)
    batches = [jax.random.bernoulli(k, 0.5, (B, d)).astype(jnp.float32) for k in keys[1:]]
    state = svi.init(keys[0], batches[0])
    update = jax.jit(svi.update)
    start = time.perf_counter()
    state, loss = update(state, batches[0])
    loss.block_until_ready()
    return update, state, batches, time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + XLA_SINGLE_THREAD).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import numpyro

    update, state, batches, compile_seconds = build(args)
    versions = {"numpyro": numpyro.__version__, "jax": jax.__version__}
    print(json.dumps({"ready": True, "compile_seconds": compile_seconds, "versions": versions}), flush=True)
    for line in sys.stdin:
        if line.strip() in ("", "quit"):
            break
        n = int(line)
        start = time.perf_counter()
        for i in range(n):
            state, loss = update(state, batches[i % len(batches)])
        loss.block_until_ready()
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
