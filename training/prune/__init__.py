"""Structured filter pruning of nsfwjs MobileNetV2, recovered by distillation, exported for
Triton beside the unpruned model. Run ``python -m training.prune --help``."""
