"""svd_trt.calibration: calibration data from real pipeline runs, and quantized UNets.

capture (record UNet inputs) -> dataset (the on-disk format) -> quantize (INT8 QDQ via
ONNX Runtime) -> report / speed (its cost vs the float UNet). See calibration/README.md.
Submodules are imported on use: quantize needs onnx, capture only the runtime.
"""
