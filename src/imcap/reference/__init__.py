"""A gradient-checked NumPy captioning engine (cs231n assignment 3) that verifies imcap's PyTorch models."""
