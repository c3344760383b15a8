"""Whole Relax models with this package's transposed convolution.

``mod = tvm_convt.relax.use_tvm_convt(mod, target)`` replaces each
``relax.nn.conv1d_transpose`` (as ``from_exported_program`` writes PyTorch's
ConvTranspose1d) by a call to the PrimFunc :func:`tvm_convt.compile` would build,
fusing the bias add after it; ``tvm.compile`` then builds the model as usual.
:func:`workloads` and :func:`write_suite` give the layers to tune; on CPUs,
``tvm.compile(mod, target, relax_pipeline=cpu_pipeline(target))`` also fuses and schedules
the element-wise functions around them. A model converted by ``tvm_convt.torch.convert`` imports
with ``from_exported_program(..., custom_convert_map=torch_convert_map())``. Needs TVM, not torch.
"""

from __future__ import annotations

from .calls import Unsupported
from .cpu_schedule import SpatialCPU, cpu_pipeline, schedule_spatial
from .legalize import use_tvm_convt
from .torch_import import torch_convert_map
from .workloads import workloads, write_suite

__all__ = ["SpatialCPU", "Unsupported", "cpu_pipeline", "schedule_spatial", "torch_convert_map", "use_tvm_convt",
           "workloads", "write_suite"]
