"""Operations: export, checkpoints and resume, determinism, non-finite losses, DDP."""
