"""Fine-tuning the last inverted-residual blocks of the shared backbone together with the heads.

``python -m training.finetune --data DIR --out bench/results`` compares heads trained jointly
with the last blocks against heads on the frozen backbone, on the same held-out split, and
exports the tuned backbone under a model name of its own only when it wins (see ``cli``).
"""
