"""What ``ppl-vae list`` prints: every registered name with one whole line of plain text.

Kept here, without importing torch, so that ``ppl-vae list`` answers at once. A test holds these
names equal to the registries (``ppl_vae.models.PRIORS``, ``LIKELIHOODS``, ``ppl_vae.guides.GUIDES``,
``ppl_vae.infer.objectives.OBJECTIVES``, ``ppl_vae.networks.NETWORK_CHOICES``,
``ppl_vae.infer.compiled.COMPILE_CHOICES``), so an entry cannot be
added to one without the other.
"""

PRIORS = {
    "normal": "N(0, I), the standard VAE prior",
    "learned-normal": "N(m, diag s^2) with learnable m and s",
    "laplace": "independent Laplace(0, 1/sqrt 2): unit variance, heavier tails",
    "student-t": "independent Student-t(nu, 0, 1) with learnable degrees of freedom",
    "mog": "mixture of 10 diagonal Gaussians with learnable weights, locs and scales",
    "vamp": "VampPrior: mixture of q(z|u_k) at 50 learned pseudo-inputs",
    "hierarchical": "z ~ N(0, diag tau^2), tau ~ HalfCauchy(1), inferred by a LogNormal global guide",
    "flow": "N(0, I) through two learnable affine coupling layers",
    "sphere": "uniform on the unit hypersphere S^(d-1) (needs the power-spherical guide)",
    "dirichlet": "Dirichlet(1), uniform on the simplex (needs the dirichlet guide)",
    "mixture": "mixture:K, y ~ Categorical(pi), z | y ~ N(loc_y, scale_y), y summed out by enumeration",
    "semi-supervised": "M2 (--labelled N): label y observed for some examples, enumerated for the rest",
    "conditional": "conditional VAE (--condition-on label): p(z | c) learned per class, decoder p(x | z, c)",
    "covariates": "covariates:M (--condition-on COLUMNS of a table): p(z | c) and p(x | z, c) on real covariates",
    "groups": "groups:G (--groups COLUMN): z ~ N(mu_group, tau^2), mu_g ~ N(0, I), tau inferred",
}

GUIDES = {
    "normal": "amortized diagonal Normal posterior N(mu(x), diag sigma(x)^2)",
    "full-rank": "amortized multivariate Normal posterior with a full covariance",
    "iaf": "diagonal Normal pushed through affine autoregressive layers that also see h(x) (IAF)",
    "delta": "amortized point mass at f(x): a plain autoencoder when beta = 0",
    "power-spherical": "amortized power spherical posterior on the unit sphere (De Cao & Aziz 2020)",
    "dirichlet": "amortized Dirichlet posterior on the probability simplex",
}

LIKELIHOODS = {
    "bernoulli": "independent Bernoulli pixels, one logit per feature",
    "continuous-bernoulli": "continuous Bernoulli grey levels in [0, 1], one logit per feature",
    "gaussian": "independent Normal features around the decoder output, one shared learned scale",
    "gaussian-per-feature": "independent Normal features around the decoder output, one learned scale per feature",
    "beta": "Beta grey levels in [0, 1], two parameters per feature",
    "laplace": "independent Laplace features around the decoder output, one shared learned scale (an L1 loss)",
    "discretized-logistic": "8-bit grey levels: a logistic discretized to the 256 levels k/255",
    "logistic-mixture": "8-bit levels: a mixture of K = 5 discretized logistics per value (logistic-mixture:K)",
    "categorical-256": "8-bit grey levels: an unconstrained categorical over the 256 levels of every feature",
    "poisson": "independent Poisson counts with log rate from the decoder",
    "negative-binomial": "independent negative-binomial counts with log mean from the decoder, learned dispersion",
}

OBJECTIVES = {
    "auto": "per latent site the analytic KL where torch registers one, Monte Carlo otherwise (default)",
    "trace": "Trace_ELBO: Monte Carlo KL at every latent site, for every prior and guide",
    "meanfield": "TraceMeanField_ELBO, strict: refused unless every latent site has an analytic KL",
    "iwae": "importance-weighted bound (RenyiELBO, alpha=0) with --particles K draws, vectorized",
}

#: Encoder and decoder architectures (``ppl_vae.networks.NETWORK_CHOICES``, in this order).
NETWORKS = {
    "auto": "conv for images of at least 16x16 pixels or in colour, mlp otherwise (default)",
    "mlp": "fully connected layers (--hidden-dims) over the flattened example; tables and images",
    "conv": "stride-2 convolutions (32, 64, 128.. channels) to a small map, then --hidden-dims; images",
    "resnet": "the conv network with a residual block after every stride-2 convolution; images",
}

#: How training steps run (``ppl_vae.infer.compiled.COMPILE_CHOICES``, in this order).
COMPILE = {
    "auto": "trace for a batch shape with >= 1,000 steps planned; on for an MLP with >= 2 million examples (default)",
    "on": "the recorded step compiled by torch.compile (Inductor; a CUDA graph on a GPU), cached on disk",
    "trace": "the step's tensor operations (loss and backward) recorded once per batch shape and replayed",
    "off": "Pyro's programs and autograd run eagerly at every step (the reference)",
}

CATALOG = {
    "priors (--prior)": PRIORS,
    "guides (--guide)": GUIDES,
    "likelihoods (--likelihood)": LIKELIHOODS,
    "objectives (--elbo)": OBJECTIVES,
    "networks (--network)": NETWORKS,
    "training steps (--compile)": COMPILE,
}
