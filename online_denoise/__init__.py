"""online_denoise: a Monte Carlo denoiser that learns while you render.

The package's modules know neither Mitsuba nor OpenGL; frames arrive as plain
objects (see ``renderer.Frame``). Importing this package imports nothing heavy.
"""

__version__ = "0.1.0"
