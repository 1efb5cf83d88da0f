"""Unsupervised domain adaptation of the shared backbone's last blocks.

Step A re-estimates the BatchNorm statistics of the last blocks on the platform's unlabelled
images; step B fine-tunes those blocks with a SimCLR-style contrastive loss (NT-Xent on two
augmented views) under DDP. Both are judged by a linear probe on held-out labelled images and by
the drift of the frozen five-class head on the nsfwjs reference images and the stand-ins.

    python -m training.adapt --data DIR --out bench/results [--steps N] [--export]
    torchrun --nproc_per_node 2 -m training.adapt --data DIR --out bench/results
"""
