"""executor: runs a planner Plan on torch.distributed and measures it."""
