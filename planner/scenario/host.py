"""The host side of a node: the GPU-host link, host memory and NVMe (what offload moves over).

Bandwidths are GB/s per GPU per direction (the same unit as NetworkSpec); a link shared by
several GPUs is divided by them in the preset.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from planner.plan import OffloadState, OffloadTier

_FROZEN = ConfigDict(frozen=True, extra="forbid")

# PCI-SIG base specifications, x16 per direction after 128b/130b coding: 4.0 at 16 GT/s, 5.0 at 32 GT/s.
PCIE_GEN4_X16_GBS = 31.5
PCIE_GEN5_X16_GBS = 63.0
# NVIDIA Grace Hopper / GB200 datasheets: NVLink-C2C 900 GB/s bidirectional between Grace and its GPU(s).
NVLINK_C2C_GBS = 450.0

# The offload settings `search` tries, in order, when nothing fits without offload: the cheapest
# first (optimizer states to host, ZeRO-Offload, Ren et al. 2021), then gradients too, then
# ZeRO-Infinity's optimizer on NVMe with parameters on host (Rajbhandari et al. 2021).
OFFLOAD_LADDER: tuple[dict[OffloadState, OffloadTier], ...] = (
    {OffloadState.OPTIMIZER: OffloadTier.HOST},
    {OffloadState.OPTIMIZER: OffloadTier.HOST, OffloadState.GRADIENTS: OffloadTier.HOST},
    {OffloadState.OPTIMIZER: OffloadTier.NVME, OffloadState.PARAMETERS: OffloadTier.HOST},
)


class HostLink(StrEnum):
    PCIE_GEN4 = "pcie-gen4"
    PCIE_GEN5 = "pcie-gen5"
    NVLINK_C2C = "nvlink-c2c"
    SHARED_MEMORY = "shared-memory"  # a CPU "device": host and device memory are the same DRAM


class HostSpec(BaseModel):
    """Per GPU: link to host memory, host memory capacity and bandwidth (for CPU optimizer steps), NVMe."""

    model_config = _FROZEN
    link: HostLink = HostLink.PCIE_GEN5
    link_gbs: float = Field(PCIE_GEN5_X16_GBS, gt=0, description="GB/s per GPU per direction, device <-> host")
    memory_gib: float = Field(256.0, gt=0, description="host DRAM per GPU")
    memory_bandwidth_gbs: float = Field(77.0, gt=0, description="host DRAM bandwidth per GPU (CPU Adam)")
    nvme_gbs: float = Field(4.0, gt=0, description="NVMe bandwidth per GPU per direction")
    nvme_gib: float = Field(3500.0, gt=0, description="NVMe capacity per GPU")
