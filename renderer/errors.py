"""Errors the renderer raises for bad input; the CLI prints them as one line."""


class RendererError(Exception):
    """A problem with the user's scene, path or settings, not a bug."""
