"""The runtime: a wrapper class around one compiled module, a layer, and a function.

- :class:`CompiledConvTranspose1d` (``module.py``) wraps one library for one static workload, or for
  any batch and length (a symbolic module, which picks its function by length): it validates
  inputs against the module's metadata, runs it, and exports or loads it with its ``.json`` sidecar.
- :class:`ConvTranspose1d` (``layer.py``) is the layer, with PyTorch's constructor, weight
  initialisation and ``output_size``; it compiles (or finds in the cache) one symbolic
  module on CPUs (``lengths="any"``), or one module per input shape.
- :func:`conv_transpose1d` (``layer.py``) is the functional form of ``F.conv_transpose1d``.
- :func:`stream` and :meth:`ConvTranspose1d.stream` (``streams.py``): the layer fed chunk by chunk.
- ``arrays.py``: the arrays they take and give (NumPy, DLPack, device memory, alignment).
"""

from .arrays import ALIGNMENT, DeviceArray, Output, aligned_empty, as_array
from .layer import ConvTranspose1d, conv_transpose1d
from .module import LENGTHS, CompiledConvTranspose1d, compile, module_workload  # noqa: A004
from .streams import ConvTranspose1dStream, stream

__all__ = ["ALIGNMENT", "LENGTHS", "CompiledConvTranspose1d", "ConvTranspose1d", "ConvTranspose1dStream",
           "DeviceArray", "Output", "aligned_empty", "as_array", "compile", "conv_transpose1d", "module_workload",
           "stream"]
