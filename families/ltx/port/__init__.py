"""The PyTorch port of LTX-Video's components (export side: needs the [export] extra)."""
