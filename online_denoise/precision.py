"""How the network runs: number format and memory layout. Not part of a checkpoint.

Measured on the project's 2-core Xeon (AMX, AVX-512 BF16), width-16 U-Net with
the 3-scale kpn head: a training step on 4 x 128^2 crops takes 138 ms in
fp32, 108 ms with channels_last and 79 ms with channels_last and bf16
autocast; inference on 2 x 256^2 takes 98, 69 and 52 ms. The kernel logits
are taken back to fp32 before the softmax, so the filtering itself is exact.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

DTYPES = ("fp32", "bf16", "fp16")
# What torch.compile compiles, and how: "default" fuses kernels with Inductor, "reduce-overhead" also
# replays CUDA graphs.
COMPILE_PARTS = ("off", "infer", "train", "all")
COMPILE_MODES = ("default", "reduce-overhead")


@dataclass(frozen=True)
class Precision:
    dtype: str = "fp32"  # autocast format of the convolutions: fp32 (none), bf16, or fp16 (CUDA, loss-scaled)
    channels_last: bool = False  # NHWC tensors: oneDNN on CPUs and tensor cores on GPUs prefer them
    # torch.compile the network for inference, training, both or neither (COMPILE_PARTS). On the 2-core
    # CPU Inductor halves inference (2 x 256^2: 63 -> 28 ms) but slows the training step (8 x 96^2:
    # 81 -> 116 ms), and its first use compiles for 61 s (3 s once its cache in /tmp is warm).
    compile: str = "off"
    compile_mode: str = "default"  # COMPILE_MODES

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"--precision {self.dtype}: expected auto or one of {', '.join(DTYPES)}")
        if self.compile not in COMPILE_PARTS:
            raise ValueError(f"--compile {self.compile}: expected one of {', '.join(COMPILE_PARTS)}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {self.compile_mode}: expected one of {', '.join(COMPILE_MODES)}")

    def prepare(self, model: torch.nn.Module, role: str) -> torch.nn.Module:
        """The model for ``role`` ("infer" or "train") in this memory layout, compiled if asked.

        Compiling is in place, so parameters and state_dict keys stay those of
        the eager module and checkpoints load either way.
        """
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile in (role, "all"):
            model.compile(mode=self.compile_mode, dynamic=False)
        return model

    def autocast(self, device: torch.device):
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16 if self.dtype == "bf16" else torch.float16)

    @property
    def needs_loss_scaling(self) -> bool:
        # fp16's narrow exponent flushes small gradients to zero; bf16 shares fp32's exponent.
        return self.dtype == "fp16"


def cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_has_bf16() -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except (AssertionError, RuntimeError, TypeError):  # no CUDA build or device
        return False


def choose_precision(name: str, device: torch.device, compile: str = "off", cuda_graphs: bool = False) -> Precision:
    """auto: bf16 on GPUs with native bf16, else fp16 with loss scaling; on CPUs bf16 where native, else fp32.

    On an H100 (512^2, gpu network, 4 spp, 2 steps a frame) bf16 ran the loop at 26.3 and 25.0 frames/s against
    24.6 and 24.7 for fp16 with its loss scaling, at the same quality (41.95 / 42.23 dB against 41.82).
    """
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if cuda_has_bf16() else "fp16"
        else:
            name = "bf16" if cpu_has_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 runs on CUDA only; use bf16 or fp32 on the CPU")
    return Precision(name, channels_last=True, compile=compile,
                     compile_mode="reduce-overhead" if cuda_graphs else "default")
