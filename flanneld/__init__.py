"""flanneld: a flannel-compatible overlay network daemon written in Python.

Kept free of imports on purpose: the CNI plugin lives in this package too and must start fast.
"""

__version__ = "0.1.0"
