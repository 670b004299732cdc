"""svd_trt.engines"""
