"""Named GPU and cluster presets (datasheet numbers, cited) and [cluster] table resolution."""

from __future__ import annotations

from typing import Any

from planner.scenario.spec import ClusterSpec, GpuSpec, NetworkSpec


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


def _cluster(name: str, gpu: str, *, gpus_per_node: int, intra: float, inter: float,
             intra_lat_us: float = 3.0, inter_lat_us: float = 8.0, nvlink_domain: int | None = None) -> dict[str, Any]:
    return {
        "name": name, "gpu": GPU_PRESETS[gpu].model_dump(), "gpus_per_node": gpus_per_node,
        "network": NetworkSpec(intra_node_gbs=intra, inter_node_gbs=inter, intra_node_latency_us=intra_lat_us,
                               inter_node_latency_us=inter_lat_us, nvlink_domain=nvlink_domain).model_dump(),
    }


# Per-node templates; `num_nodes` comes from the scenario (default 1).
CLUSTER_PRESETS: dict[str, dict[str, Any]] = {
    # DGX A100 user guide: 8x A100-80GB, NVSwitch (NVLink3), 8x 200 Gb/s HDR ConnectX-6.
    "dgx-a100": _cluster("dgx-a100", "a100-80gb", gpus_per_node=8, intra=_NVLINK3_GBS, inter=_HDR_IB_GBS),
    "dgx-a100-40gb": _cluster("dgx-a100-40gb", "a100-40gb", gpus_per_node=8, intra=_NVLINK3_GBS, inter=_HDR_IB_GBS),
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
                            nvlink_domain=72),
    # AMD MI300X platform: 8 GPUs on Infinity Fabric (7 links x 64 GB/s per direction), 8x 400 Gb/s NICs.
    "mi300x-8": _cluster("mi300x-8", "mi300x", gpus_per_node=8, intra=448.0, inter=_NDR_IB_GBS),
    # This project's CPU test machine: one node, 4 gloo ranks on loopback (../shared/PLATFORM.md).
    "cpu-local": _cluster("cpu-local", "cpu", gpus_per_node=4, intra=1.0, inter=1.0, intra_lat_us=300.0,
                          inter_lat_us=300.0),
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
        if isinstance(table.get("network"), dict):
            table["network"] = base["network"] | table["network"]
        table = base | {"num_nodes": 1} | table
    if isinstance(table.get("gpu"), str):
        table["gpu"] = gpu_preset(table["gpu"]).model_dump()
    return table
