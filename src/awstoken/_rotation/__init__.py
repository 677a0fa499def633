"""Rotation: keeping each token fresh in storage (one leader), refusals, and on-rotate hooks."""
