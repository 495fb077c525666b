"""Inference: the objectives and the checks of what works with what, the training step and its optimizer,
:func:`~ppl_vae.infer.fit.fit` with its schedules and data-parallel strategy, and held-out evaluation
(:func:`~ppl_vae.infer.evaluate.evaluate`). Imports the core (``vae``, ``models``, ``guides``, ``data``)
and nothing above it."""
