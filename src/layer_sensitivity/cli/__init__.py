"""Hydra entry points: turn a composed config into plain arguments and call the core."""
