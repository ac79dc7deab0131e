"""The ``cluster`` section: the machines a run is planned for (``nemo-resrl plan``, and the check
``nemo-resrl train`` makes on a GPU before it allocates anything). docs/plan.md gives the source of every
default."""

from __future__ import annotations

from dataclasses import dataclass

from nemo_resrl.config.keys import Keys, Section

PLAN_CHECKS = ("error", "warn", "off")


@dataclass
class ClusterConfig(Section):
    """Nodes, GPUs and their limits (``cluster``); the defaults describe 8 x H100 80 GB SXM nodes."""

    KEY = "cluster."

    nodes: int = 1
    gpus_per_node: int = 8
    gpu_memory_gib: float = 79.6
    """Device memory as CUDA reports it (an H100 80 GB: 81559 MiB)."""
    gpu_bf16_tflops: float = 989.0
    """Dense bf16 peak per GPU (H100 SXM)."""
    gpu_fp32_tflops: float = 67.0
    """Dense float32 peak per GPU without TF32 (H100 SXM); the ResRL subspace fits run at it."""
    hbm_gbps: float = 3350.0
    """Device memory bandwidth per GPU, GB/s (H100 SXM HBM3); bounds decoding."""
    nvlink_gbps: float = 450.0
    """Per GPU, per direction, GB/s (NVLink 4: 900 GB/s both directions)."""
    network_gbps: float = 50.0
    """Between nodes, per GPU, per direction, GB/s (one 400 Gb/s InfiniBand NDR port per GPU)."""
    pcie_gbps: float = 25.0
    """Host <-> device copies of pinned memory, per GPU, per direction, GB/s (times ``actor.offload``):
    PCIe Gen5 x16 is 64 GB/s on paper; 25 assumes the eight GPUs of a node share the host's memory
    bandwidth (an assumption, not measured)."""
    mfu: float = 0.35
    """Model FLOPs utilisation assumed for the log-prob pass and training (the estimate's one free
    parameter: stated, not measured)."""
    runtime_overhead_gib: float = 3.0
    """Per GPU, outside PyTorch's tensors: the CUDA context, NCCL communicators and their buffers, the
    caching allocator's fragmentation."""
    margin_gib: float = 0.0
    """A phase fits when its peak plus this margin is within gpu_memory_gib."""
    enforce: str = "error"
    """What nemo-resrl train does on a GPU with a plan that does not fit: error (refuse before anything is
    allocated), warn, off."""

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    def check(self, keys: Keys) -> None:
        keys.at_least(self.nodes, "nodes", 1)
        keys.at_least(self.gpus_per_node, "gpus_per_node", 1)
        rates = (
            "gpu_memory_gib",
            "gpu_bf16_tflops",
            "gpu_fp32_tflops",
            "hbm_gbps",
            "nvlink_gbps",
            "network_gbps",
            "pcie_gbps",
        )
        for k in rates:
            keys.require(getattr(self, k) > 0, k, f"must be > 0, got {getattr(self, k)}")
        keys.require(0 < self.mfu <= 1, "mfu", f"must be in (0, 1], got {self.mfu}")
        keys.at_least(self.runtime_overhead_gib, "runtime_overhead_gib", 0)
        keys.at_least(self.margin_gib, "margin_gib", 0)
        keys.one_of(self.enforce, "enforce", PLAN_CHECKS)
