"""Shared code: config loading, device setup, errors, and the control core (see CLAUDE.md)."""
