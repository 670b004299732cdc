"""svd_trt.runtime"""
