"""svd-trt: Stable Video Diffusion as verified ONNX Runtime / TensorRT engines.

The namespace root holds only what every layer shares and that needs no torch:
model configs (`config`) and component I/O specs (`spec`). The port and export
live in `svd_trt.export`, engine building in `svd_trt.engines`, the numpy
runtime in `svd_trt.runtime`.
"""

__version__ = "0.1.0"
