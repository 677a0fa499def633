"""Token sources: where a token comes from and how its raw form becomes a header value.

The native AWS sources are the public :mod:`awstoken.aws`; the command source, transforms
and the helpers they share live here."""
