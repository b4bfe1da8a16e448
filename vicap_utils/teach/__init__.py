"""Notebook support: set-up helpers, exercise checks, report tables and figures, the demo app."""
