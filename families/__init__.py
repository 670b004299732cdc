"""Model families: each folder holds one family's port, component descriptions, pipeline and options.

The shared layers (engine directory, export and build, check, memory, serving, CLI) take a family
and name none; a new family is its own folder plus one registry line here.
"""
