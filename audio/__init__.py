"""The audio app: long-form speech recognition with a Conformer-CTC whose attention is any core_attn variant.

``python -m audio.train`` / ``audio.evaluate`` / ``audio.transcribe``; see docs/audio.md.
"""
