"""Training: process groups, the loop, checkpointing, logging."""
