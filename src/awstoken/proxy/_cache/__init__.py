"""The pull-through cache: ``store`` (objects on disk, locks, eviction), ``keys`` (what
may be cached), ``http`` (hits, verified misses on the request path), ``serve`` (a hit
answered from disk) and ``usage`` (``awstoken cache``)."""
