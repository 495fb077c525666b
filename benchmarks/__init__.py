"""Benchmarks of ppl_vae against hand-written references (run e.g. ``python -m benchmarks.parity``)."""
