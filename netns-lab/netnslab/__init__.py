"""netns-lab: a multi-node flannel cluster built from network namespaces on one machine."""
