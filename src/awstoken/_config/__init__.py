"""Configuration: the TOML file to typed settings, checks beyond the file, reloads, and the
objects built from settings."""
