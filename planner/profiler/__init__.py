"""Profiler: measure this machine's kernels (kernels.py), links (links.py) and host costs (host.py),
then fit them into a HardwareProfile (build.py); run.py drives the ranks."""

from planner.profiler.build import build_profile, collective_fits
from planner.profiler.host import HostSamples, PassTiming
from planner.profiler.host_fit import fit_host
from planner.profiler.links import LinkResult, fit_alpha_beta, tier_groups
from planner.profiler.pairs import PairCase, link_table, measure_pairs, pair_cases, pair_sizes
from planner.profiler.run import ProfileConfig, RankReport, profile_machine, write_profile

__all__ = [
    "HostSamples", "LinkResult", "PairCase", "PassTiming", "link_table", "measure_pairs", "pair_cases", "pair_sizes", "ProfileConfig", "RankReport", "build_profile",
    "collective_fits", "fit_alpha_beta", "fit_host", "profile_machine", "tier_groups", "write_profile",
]
