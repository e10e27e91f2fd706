"""executor: runs a planner Plan on torch.distributed and measures it."""

from executor.launch import Launch, run_plan
from executor.train import Measurement, RunOptions

__all__ = ["Launch", "Measurement", "RunOptions", "run_plan"]
