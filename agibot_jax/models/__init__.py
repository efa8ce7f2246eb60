"""Networks: the multiview control DiT, the Wan2.1 VAE, the text encoder."""
