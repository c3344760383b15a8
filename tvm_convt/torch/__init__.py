"""PyTorch interop; the only part of the package that imports torch.

- :class:`ConvTranspose1d`: ``torch.nn.ConvTranspose1d`` computed by a compiled module;
- :func:`conv_transpose1d`: the functional form, the custom op ``tvm_convt::conv_transpose1d``
  (``torch.compile``, ``torch.export`` and autograd know it);
- :class:`StreamingConvTranspose1d`: the layer fed chunk by chunk (pushes and a flush);
- :func:`convert` / :func:`revert`: a model's layers to and from it, in place;
- ``version``, ``set_threads``, ``functional_call``: what the benchmark needs.

Importing it sets ``TVM_THREAD_POOL_SPIN_COUNT`` to :data:`TVM_SPIN_COUNT` unless it is set,
which takes effect if no TVM CPU kernel has run yet in the process.

Importing it without torch raises ImportError saying how to install it; callers that
treat PyTorch as optional (the benchmark) catch that.
"""

from __future__ import annotations

import os

try:
    import torch  # noqa: F401
except ImportError as err:
    raise ImportError("tvm_convt.torch needs PyTorch, which is not installed: "
                      "pip install tvm_convt[torch]") from err

# In a converted model PyTorch's OpenMP threads and TVM's pool take turns on the same cores,
# and TVM's idle workers would otherwise yield 300000 times before sleeping (measured in
# examples/README.md). TVM reads the variable when its pool first starts.
TVM_SPIN_COUNT = 1000
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", str(TVM_SPIN_COUNT))

from .bench import functional_call, set_threads, version
from .convert import convert, revert
from .module import ConvTranspose1d
from .op import conv_transpose1d
from .streaming import StreamingConvTranspose1d

__all__ = ["ConvTranspose1d", "StreamingConvTranspose1d", "conv_transpose1d", "convert", "functional_call", "revert",
           "set_threads", "version"]
