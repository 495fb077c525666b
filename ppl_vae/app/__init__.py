"""The application layer: run folders and checkpoints, the experiments (autoencoder vs VAE), the diagnose
and grad-variance reports, and every figure. It writes files; the layers below it return results."""
