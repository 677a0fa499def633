"""Credential doors: the docker credential helper, the keyring backend, the kubelet provider and
config-file formats that tools already read."""
