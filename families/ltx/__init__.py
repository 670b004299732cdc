"""LTX-Video (diffusers' LTXPipeline and LTXImageToVideoPipeline): T5 text encoder, the
LTXVideoTransformer3DModel DiT, the causal video VAE, and a flow-matching Euler schedule.

Modules at this level are numpy only (the runtime imports them); the PyTorch port is `port/`.
"""
