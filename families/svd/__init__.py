"""Stable Video Diffusion (SVD, SVD-XT; diffusers' StableVideoDiffusionPipeline): CLIP image encoder,
UNetSpatioTemporalConditionModel, the VAE encoder and temporal decoder, Euler over Karras sigmas.

Modules at this level are numpy only (the runtime imports them); the PyTorch port is `port/`.
"""
