"""Credential doors: what tools already call for a credential, answered from awstoken's storage.

``docker`` (the docker credential helper), ``keyring`` (pip, uv, twine, poetry), ``kubelet``
(the kubelet's image credential provider), ``common`` (which token answers for a host or URL)
and ``fast`` (the helpers' hit path: no TOML, no validation). Config files kept fresh for
tools that read one instead are sinks (:mod:`awstoken._rotation.formats`)."""
