"""svd_trt.export"""
