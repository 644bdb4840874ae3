"""The vision app: large-image classification with a ViT over any core_attn attention variant.

``python -m vision.train`` (MegaMNIST, built in; ``model=timm_vit`` for any timm ViT with swapped
attention), ``python -m vision.evaluate ckpt_path=...``, ``python -m vision.predict image.png ckpt_path=...``
(prediction + attention overlay), ``python -m vision.benchmark`` (dense vs efficient variants).
"""
