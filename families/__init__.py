"""Model families: each folder holds one family's port, component descriptions, pipeline and options.

The shared layers (engine directory, export and build, check, memory, serving, CLI) take a family
(svd_trt/family.py) and name none; a new family is its own folder plus one line here.
"""

# family name (recorded in manifests) -> "module:object" implementing svd_trt.family.Family
REGISTRY = {
    "svd": "svd_trt.families.svd.family:SVD",
    "ltx": "svd_trt.families.ltx.family:LTX",
}
