"""Serving with NVIDIA Triton Inference Server: the request contract, the repository writer, the
server process manager and the Python-backend model (numpy only; no torch)."""
