"""Heads on the shared backbone: labelled data, training, metrics and export to Triton."""
