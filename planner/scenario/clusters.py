"""Named GPU and cluster presets (datasheet numbers, cited) and [cluster] table resolution."""

from __future__ import annotations

from typing import Any

from planner.scenario.host import NVLINK_C2C_GBS, PCIE_GEN4_X16_GBS, PCIE_GEN5_X16_GBS, HostLink, HostSpec
from planner.scenario.spec import ClusterSpec, FabricSpec, FabricTier, GpuSpec, NetworkSpec, TierKind


def _gpu(name: str, *, bf16: float, fp8: float | None, fp32: float, mem_gib: float, bw_gbs: float,
         sms: int | None = None, clock_ratio: float = 1.0) -> GpuSpec:
    peaks = {"bf16": bf16, "fp16": bf16, "fp32": fp32} | ({"fp8": fp8} if fp8 else {})
    return GpuSpec(name=name, peak_tflops=peaks, memory_gib=mem_gib, memory_bandwidth_gbs=bw_gbs, sm_count=sms,
                   sustained_clock_ratio=clock_ratio)


def power_capped_clock_ratio(limit_w: float, rated_w: float) -> float:
    """Sustained clock of a part capped at `limit_w` relative to the same silicon at `rated_w`.

    Dynamic power goes as C V^2 f, and over the DVFS range voltage rises about linearly with
    frequency, so P ~ f^3 and f ~ P^(1/3) (Weste & Harris, CMOS VLSI Design, Sec. 5.3; the cube
    law behind GPU power capping in e.g. Patki et al. 2019 and NVIDIA's nvidia-smi -pl docs).
    """
    return min(1.0, (limit_w / rated_w) ** (1 / 3))


# Dense (non-sparse) tensor-core peaks in TFLOP/s; fp32 is the TF32 tensor-core rate where the
# frameworks use it for fp32 matmuls. memory_gib is the usable HBM as reported by the driver
# rounded to the marketed GB.
GPU_PRESETS: dict[str, GpuSpec] = {
    # NVIDIA A100 datasheet (2021): 312 bf16, 156 tf32; 40GB HBM2 1555 GB/s, 80GB HBM2e 2039 GB/s.
    "a100-40gb": _gpu("a100-40gb", bf16=312, fp8=None, fp32=156, mem_gib=40, bw_gbs=1555, sms=108),
    "a100-80gb": _gpu("a100-80gb", bf16=312, fp8=None, fp32=156, mem_gib=80, bw_gbs=2039, sms=108),
    # NVIDIA H100 SXM datasheet: 989 bf16, 1979 fp8, 494 tf32 (dense); 80GB HBM3 3.35 TB/s.
    "h100-sxm": _gpu("h100-sxm", bf16=989, fp8=1979, fp32=494, mem_gib=80, bw_gbs=3350, sms=132),
    # H100 SXM5 96GB HBM2e at a 500 W cap (Meta Grand Teton, torchtitan benchmarks: "96GB HBM2e
    # 2.4TB/s, 500W"): the H100 die (132 SMs, datasheet peaks at the 700 W rating), clocks capped.
    "h100-hbm2e-500w": _gpu("h100-hbm2e-500w", bf16=989, fp8=1979, fp32=494, mem_gib=96, bw_gbs=2400, sms=132,
                            clock_ratio=power_capped_clock_ratio(500, 700)),
    # H800 SXM: H100 compute with NVLink cut to 400 GB/s bidirectional (DeepSeek-V3 report Sec. 3.1).
    "h800-sxm": _gpu("h800-sxm", bf16=989, fp8=1979, fp32=494, mem_gib=80, bw_gbs=3350, sms=132),
    # NVIDIA H200 datasheet: H100 compute; 141GB HBM3e 4.8 TB/s.
    "h200": _gpu("h200", bf16=989, fp8=1979, fp32=494, mem_gib=141, bw_gbs=4800, sms=132),
    # NVIDIA DGX B200 datasheet: 72 PF fp8 / 36 PF bf16 dense per 8 GPUs -> 4500 / 2250; 1440GB -> 180GB, 8 TB/s.
    "b200": _gpu("b200", bf16=2250, fp8=4500, fp32=1100, mem_gib=180, bw_gbs=8000, sms=148),
    # NVIDIA GB200 NVL72 datasheet: 180 PF bf16 / 360 PF fp8 dense per 72 GPUs -> 2500 / 5000; 13.4TB -> 186GB, 8 TB/s.
    "gb200": _gpu("gb200", bf16=2500, fp8=5000, fp32=1250, mem_gib=186, bw_gbs=8000, sms=148),
    # AMD Instinct MI250X datasheet (per OAM, both GCDs): 383 bf16, 95.7 fp32 matrix; 128GB 3.28 TB/s.
    "mi250x": _gpu("mi250x", bf16=383, fp8=None, fp32=95.7, mem_gib=128, bw_gbs=3277, sms=220),
    # AMD Instinct MI300X datasheet: 1307 bf16, 2615 fp8 dense, 163 fp32 matrix; 192GB 5.3 TB/s.
    "mi300x": _gpu("mi300x", bf16=1307, fp8=2615, fp32=163, mem_gib=192, bw_gbs=5300, sms=304),
    # A 2-core x86 CPU as a "device" for executor runs (measured, ../shared/PLATFORM.md: 2 threads
    # reach ~0.75 TFLOP/s bf16 and ~0.175 fp32 GEMM). Memory: the 24 GiB machine split 4 ways.
    "cpu": _gpu("cpu", bf16=0.75, fp8=None, fp32=0.175, mem_gib=6, bw_gbs=40),
}

_NVLINK3_GBS = 300.0  # A100 NVLink3: 600 GB/s bidirectional
_NVLINK4_GBS = 450.0  # H100 NVLink4: 900 GB/s bidirectional
_NVLINK5_GBS = 900.0  # B200/GB200 NVLink5: 1.8 TB/s bidirectional
_HDR_IB_GBS = 25.0  # one 200 Gb/s HDR NIC per GPU
_NDR_IB_GBS = 50.0  # one 400 Gb/s NDR NIC per GPU


# -- hierarchical fabrics ---------------------------------------------------------------------
# NVIDIA DGX SuperPOD reference architectures (RA-11333-001 for DGX H100; the DGX B200 RA's
# "Larger DGX SuperPOD component counts" table): a scalable unit (SU) is 32 DGX nodes (256 GPUs)
# on a rail-optimised leaf layer, one leaf switch per rail; up to 8 SUs (2,048 GPUs: 64 leaf,
# 32 spine switches) form a 2-tier fabric; 16 SUs and more add a core tier (64 SUs = 16,384 GPUs:
# 512 leaf, 512 spine, 256 core switches). Node-leaf, leaf-spine and spine-core cable counts are
# all equal to the GPU count, i.e. every tier is non-blocking (oversubscription 1).
# Latency: the NIC-to-NIC small-message latency of one leaf crossing is the inter-node latency of
# the node presets (8 us, NCCL tree/ring latency on NDR); each further tier adds two switch
# traversals (up and down, ~0.13 us port-to-port on NVIDIA Quantum-2 NDR switches) plus ~100 m of
# fibre each way (~0.5 us), rounded to +1 us per tier.
_SU_GPUS = 256  # 32 DGX nodes x 8 GPUs (SuperPOD RA)
_POD_GPUS = 2048  # 8 SUs: the largest 2-tier SuperPOD (B200 RA table)
_TIER_HOP_US = 1.0


def _tier(kind: TierKind, size: int, gbs: float, latency_us: float, oversub: float = 1.0) -> FabricTier:
    return FabricTier(kind=kind, size_gpus=size, bandwidth_gbs=gbs, latency_us=latency_us, oversubscription=oversub)


def _superpod(name: str, *, nvlink_gbs: float, nic_gbs: float, core: bool, gpus: int = 16384,
              core_oversub: float = 1.0) -> FabricSpec:
    nic_lat = 8.0
    tiers = [_tier(TierKind.NVLINK, 8, nvlink_gbs, 3.0), _tier(TierKind.LEAF, _SU_GPUS, nic_gbs, nic_lat)]
    if core:
        tiers += [_tier(TierKind.SPINE, _POD_GPUS, nic_gbs, nic_lat + _TIER_HOP_US),
                  _tier(TierKind.CORE, gpus, nic_gbs, nic_lat + 2 * _TIER_HOP_US, core_oversub)]
    else:
        tiers.append(_tier(TierKind.SPINE, gpus, nic_gbs, nic_lat + _TIER_HOP_US))
    cite = ("NVIDIA DGX SuperPOD RA (DGX H100 RA-11333-001; DGX B200 RA component-count table): 32-node SUs, "
            "rail-optimised leaves, 2 tiers up to 8 SUs, a core tier beyond, all tiers 1:1")
    if not core:
        cite += ("; 2-tier at 16,384 GPUs = one 2-tier fat tree per rail plane (8 planes of 2,048 nodes, "
                 "rail-only/multi-plane designs: Wang et al. 2023 arXiv 2307.12169), a hypothetical for comparison")
    return FabricSpec(name=name, tiers=tiers, rail_optimized=True, citation=cite)


# GB200 NVL72 (DGX SuperPOD GB200 RA): an SU is 8 NVL72 racks on NDR 400 Gb/s InfiniBand (one
# ConnectX-7 per GPU), 2 tiers up to 16 SUs (128 racks, 9,216 GPUs), a core tier beyond. Large
# jobs are placed in segments of 16 of a rack's 18 compute trays (64 GPUs per NVLink domain;
# NVIDIA technical blog "Unlock exascale performance on GB200 NVL72 with Slurm topology-aware job
# scheduling", segment size 16 for jobs of 128+ GPUs), so the job sees 64-GPU NVLink domains and
# 512-GPU SUs of job GPUs, 8,192-GPU spine pods.
_NVL_JOB_GPUS = 64


def _gb200_superpod(gpus: int = 98304) -> FabricSpec:
    su, pod = 8 * _NVL_JOB_GPUS, 128 * _NVL_JOB_GPUS
    return FabricSpec(name="superpod-gb200", rail_optimized=True, tiers=[
        _tier(TierKind.NVLINK, _NVL_JOB_GPUS, 900.0, 3.0), _tier(TierKind.LEAF, su, 50.0, 8.0),
        _tier(TierKind.SPINE, pod, 50.0, 8.0 + _TIER_HOP_US), _tier(TierKind.CORE, gpus, 50.0, 8.0 + 2 * _TIER_HOP_US)],
        citation="NVIDIA DGX SuperPOD GB200 RA (8-rack SUs, NDR 400G per GPU, 2 tiers to 128 racks, core beyond); "
                 "Slurm block topology segment 16 trays = 64 GPUs per NVLink domain (NVIDIA technical blog)")


FABRIC_PRESETS: dict[str, FabricSpec] = {
    "superpod-h100-3tier": _superpod("superpod-h100-3tier", nvlink_gbs=450.0, nic_gbs=50.0, core=True),
    "superpod-h100-2tier": _superpod("superpod-h100-2tier", nvlink_gbs=450.0, nic_gbs=50.0, core=False),
    # a tapered core (2:1 spine-to-core) as many large sites build to save optics; not in the RA
    "superpod-h100-3tier-tapered": _superpod("superpod-h100-3tier-tapered", nvlink_gbs=450.0, nic_gbs=50.0,
                                             core=True, core_oversub=2.0),
    "superpod-b200-3tier": _superpod("superpod-b200-3tier", nvlink_gbs=900.0, nic_gbs=50.0, core=True),
    "superpod-gb200": _gb200_superpod(),
}


def fabric_preset(name: str) -> FabricSpec:
    if name not in FABRIC_PRESETS:
        raise ValueError(f"cluster.fabric.preset: unknown fabric '{name}'; known: {', '.join(FABRIC_PRESETS)}")
    return FABRIC_PRESETS[name]


# Host side per GPU (user guides): DGX A100 2 TB DRAM, 2x EPYC 7742 (8x DDR4-3200 = 205 GB/s per
# socket), PCIe 4.0; DGX H100/H200/B200 2 TB, 2x Xeon 8480C/8570 (8x DDR5-4800 = 307 GB/s per socket),
# PCIe 5.0; GB200: one Grace (480 GB LPDDR5X, 512 GB/s) and one NVLink-C2C per two GPUs. NVMe: one
# U.2 data drive per GPU (~4 GB/s sustained writes, PCIe 4.0 x4).
_HOST_A100 = HostSpec(link=HostLink.PCIE_GEN4, link_gbs=PCIE_GEN4_X16_GBS, memory_gib=256, memory_bandwidth_gbs=51)
_HOST_H100 = HostSpec(link=HostLink.PCIE_GEN5, link_gbs=PCIE_GEN5_X16_GBS, memory_gib=256, memory_bandwidth_gbs=77)
_HOST_GRACE = HostSpec(link=HostLink.NVLINK_C2C, link_gbs=NVLINK_C2C_GBS / 2, memory_gib=223,
                       memory_bandwidth_gbs=256)
# The CPU test machine: "device" and host are one DRAM; a copy streams at memory bandwidth.
_HOST_CPU = HostSpec(link=HostLink.SHARED_MEMORY, link_gbs=10.0, memory_gib=6, memory_bandwidth_gbs=10.0,
                     nvme_gbs=1.0, nvme_gib=50)


def _cluster(name: str, gpu: str, *, gpus_per_node: int, intra: float, inter: float,
             intra_lat_us: float = 3.0, inter_lat_us: float = 8.0, nvlink_domain: int | None = None,
             host: HostSpec = _HOST_H100) -> dict[str, Any]:
    return {
        "name": name, "gpu": GPU_PRESETS[gpu].model_dump(), "gpus_per_node": gpus_per_node,
        "host": host.model_dump(),
        "network": NetworkSpec(intra_node_gbs=intra, inter_node_gbs=inter, intra_node_latency_us=intra_lat_us,
                               inter_node_latency_us=inter_lat_us, nvlink_domain=nvlink_domain).model_dump(),
    }


# Per-node templates; `num_nodes` comes from the scenario (default 1).
CLUSTER_PRESETS: dict[str, dict[str, Any]] = {
    # DGX A100 user guide: 8x A100-80GB, NVSwitch (NVLink3), 8x 200 Gb/s HDR ConnectX-6.
    "dgx-a100": _cluster("dgx-a100", "a100-80gb", gpus_per_node=8, intra=_NVLINK3_GBS, inter=_HDR_IB_GBS,
                         host=_HOST_A100),
    "dgx-a100-40gb": _cluster("dgx-a100-40gb", "a100-40gb", gpus_per_node=8, intra=_NVLINK3_GBS, inter=_HDR_IB_GBS,
                         host=_HOST_A100),
    # DGX H100 user guide: 8x H100 SXM, NVLink4 via NVSwitch, 8x 400 Gb/s NDR ConnectX-7.
    "dgx-h100": _cluster("dgx-h100", "h100-sxm", gpus_per_node=8, intra=_NVLINK4_GBS, inter=_NDR_IB_GBS),
    # Meta Grand Teton (torchtitan benchmarks): 8x H100 96GB HBM2e 500 W, NVLink4, 400 Gb/s RDMA per GPU.
    "grand-teton-h100": _cluster("grand-teton-h100", "h100-hbm2e-500w", gpus_per_node=8, intra=_NVLINK4_GBS,
                                 inter=_NDR_IB_GBS),
    # HGX H800 as used for DeepSeek-V3 (report Sec. 3.1): NVLink 160 GB/s achievable, 8x 400 Gb/s IB.
    "hgx-h800": _cluster("hgx-h800", "h800-sxm", gpus_per_node=8, intra=200.0, inter=_NDR_IB_GBS),
    # HGX H200: as DGX H100 with H200 GPUs.
    "hgx-h200": _cluster("hgx-h200", "h200", gpus_per_node=8, intra=_NVLINK4_GBS, inter=_NDR_IB_GBS),
    # DGX B200 datasheet: 8x B200, NVLink5 1.8 TB/s per GPU, 8x 400 Gb/s ConnectX-7.
    "dgx-b200": _cluster("dgx-b200", "b200", gpus_per_node=8, intra=_NVLINK5_GBS, inter=_NDR_IB_GBS),
    # GB200 NVL72 datasheet: 18 trays of 4 GPUs in one 72-GPU NVLink5 domain; one 400 Gb/s NIC per GPU.
    "gb200-nvl72": _cluster("gb200-nvl72", "gb200", gpus_per_node=4, intra=_NVLINK5_GBS, inter=_NDR_IB_GBS,
                            nvlink_domain=72, host=_HOST_GRACE),
    # AMD MI300X platform: 8 GPUs on Infinity Fabric (7 links x 64 GB/s per direction), 8x 400 Gb/s NICs.
    "mi300x-8": _cluster("mi300x-8", "mi300x", gpus_per_node=8, intra=448.0, inter=_NDR_IB_GBS),
    # SuperPODs: the node presets with their reference fabric (num_nodes comes from the scenario).
    "superpod-h100": _cluster("superpod-h100", "h100-sxm", gpus_per_node=8, intra=_NVLINK4_GBS, inter=_NDR_IB_GBS)
    | {"fabric": FABRIC_PRESETS["superpod-h100-3tier"].model_dump()},
    "superpod-b200": _cluster("superpod-b200", "b200", gpus_per_node=8, intra=_NVLINK5_GBS, inter=_NDR_IB_GBS)
    | {"fabric": FABRIC_PRESETS["superpod-b200-3tier"].model_dump()},
    # GB200 NVL72 racks at scale, 64 job GPUs per NVLink domain (see _gb200_superpod).
    "superpod-gb200": _cluster("superpod-gb200", "gb200", gpus_per_node=4, intra=_NVLINK5_GBS, inter=_NDR_IB_GBS,
                               nvlink_domain=_NVL_JOB_GPUS, host=_HOST_GRACE)
    | {"fabric": FABRIC_PRESETS["superpod-gb200"].model_dump()},
    # This project's CPU test machine: one node, 4 gloo ranks on loopback (../shared/PLATFORM.md).
    "cpu-local": _cluster("cpu-local", "cpu", gpus_per_node=4, intra=1.0, inter=1.0, intra_lat_us=300.0,
                          inter_lat_us=300.0, host=_HOST_CPU),
}


def gpu_preset(name: str) -> GpuSpec:
    if not isinstance(name, str) or name not in GPU_PRESETS:
        raise ValueError(f"cluster.gpu: unknown GPU '{name}'; known: {', '.join(GPU_PRESETS)}")
    return GPU_PRESETS[name]


def cluster_preset(name: str, *, num_nodes: int = 1) -> ClusterSpec:
    return ClusterSpec.model_validate(resolve_cluster_table({"preset": name, "num_nodes": num_nodes}))


def resolve_cluster_table(table: dict[str, Any]) -> dict[str, Any]:
    """[cluster] as written (preset + overrides, or inline with a GPU name or table) -> ClusterSpec fields."""
    table = dict(table)
    preset = table.pop("preset", None)
    if preset is not None:
        if not isinstance(preset, str) or preset not in CLUSTER_PRESETS:
            raise ValueError(f"cluster.preset: unknown cluster '{preset}'; run `planner clusters` for the list")
        base = dict(CLUSTER_PRESETS[preset])
        for section in ("network", "host"):  # partial tables override the preset's fields
            if isinstance(table.get(section), dict):
                table[section] = base[section] | table[section]
        table = base | {"num_nodes": 1} | table
    if isinstance(table.get("gpu"), str):
        table["gpu"] = gpu_preset(table["gpu"]).model_dump()
    if isinstance(table.get("fabric"), dict) and "preset" in table["fabric"]:
        fabric = dict(table["fabric"])
        table["fabric"] = fabric_preset(fabric.pop("preset")).model_dump() | fabric
    if isinstance(table.get("node_groups"), list):
        table["node_groups"] = [g | {"gpu": gpu_preset(g["gpu"]).model_dump()} if isinstance(g, dict) and
                                isinstance(g.get("gpu"), str) else g for g in table["node_groups"]]
        if "gpu" not in table and table["node_groups"] and isinstance(table["node_groups"][0], dict):
            table["gpu"] = table["node_groups"][0].get("gpu")
    return table
