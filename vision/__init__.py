"""The vision app: large-image classification with a ViT over any core_attn attention variant.

``python -m vision.train`` (MegaMNIST, built in), ``python -m vision.evaluate ckpt_path=...``.
"""
