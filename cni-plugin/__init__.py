"""flanneld.cni: the `flannel` CNI plugin (kept free of imports so the plugin starts fast)."""
