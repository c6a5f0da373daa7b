"""The private internals of libraries that litft cannot avoid, one module per library.

Each override names its reason and the library versions it was checked against; tests/test_shims.py fails
with a clear message when an installed library no longer has the internal.
"""
