"""svd_trt.calibration"""
