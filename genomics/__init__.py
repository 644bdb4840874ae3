"""Genomics app: DNA and protein sequence models over long contexts (Biopython reads, core_attn attends).

Entry points: ``python -m genomics.train``, ``python -m genomics.evaluate``, ``python -m genomics.infer``,
``python -m genomics.data {list,prepare}``.
"""
