"""Training engine: trainer (AMP, EMA, DDP, exact resume), batches, losses, schedules, checkpoints, forward passes."""
