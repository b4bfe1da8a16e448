"""Machinery: environment, hardware, folders and files, weights, checkpoints, sessions, the CLI."""
