"""Difficulty and label audit: out-of-fold pool predictions, their entropies, and which labels
look wrong (``python -m training.audit``)."""
