"""Training: distil, quantize, export. Needs the ``train`` extra (PyTorch); the runtime never imports this."""
