"""Configuration: the TOML file to typed settings, checks beyond the file, reloads, and the
objects built from settings (public face: :mod:`awstoken.config`).

- ``settings``, ``options``: the settings classes; each field a key sets declares its reader.
- ``reading``: the error collector, typed getters, and how fields declare their keys.
- ``checks``, ``readers``: checks of single values, and of keys that depend on others.
- ``load``: reads a file table by table from those declarations.
- ``validate``: what ``check`` and ``serve`` verify beyond the file; ``reload``: SIGHUP.
- ``build``: storage, sources, transforms and the keeper from settings.
"""
