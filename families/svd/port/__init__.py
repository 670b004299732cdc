"""The PyTorch port of SVD's components (export side: needs the [export] extra)."""
