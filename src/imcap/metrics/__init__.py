"""Caption metrics (pycocoevalcap-compatible)."""
