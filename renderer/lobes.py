"""How far the view may turn before a surface's shading changes: one angle per shape.

Temporal reuse reprojects a surface point into the previous view and reads
the colour it had there. That is right for diffuse shading, which does not
depend on where the camera is. A glossy reflection slides over its surface
as the camera moves, by about the angle the view turned; once the view has
turned by a good part of the reflection lobe's width, the old colour is of
something else. A running mean of n frames lags by (n - 1) / 2 frames, so
the longest useful history on a glossy surface is of the order of its lobe
width divided by the per-frame turn of the view.

The width is read from the BSDF's parameters, so it is known before any
pixel is rendered and costs nothing per frame:

- a diffuse BSDF (no glossy or delta lobe): infinite;
- a smooth (delta) lobe, as on glass, mirrors and smooth plastic: 0;
- a glossy lobe: its smallest GGX/Beckmann ``alpha`` (``alpha_u``, ``alpha_v``, or
  the principled BSDF's ``roughness`` squared), over textures too, in radians
  (alpha is the tangent of the microfacet lobe's spread, and the angle
  for small values). A glossy BSDF whose roughness cannot be read gets
  ``DEFAULT_GLOSSY``.

The table is indexed by the shape index the aux pass writes (Dr.Jit's
registry id of the shape, 1-based; entry 0 is for rays that hit nothing).
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_GLOSSY = 0.1
_ROUGHNESS_KEYS = ("alpha", "alpha_u", "alpha_v", "roughness")


def bsdf_lobe(mi, bsdf) -> float:
    """The angular width (radians) of the BSDF's narrowest view-dependent lobe; inf when it has none."""
    if bsdf is None:
        return math.inf
    flags = int(bsdf.flags())
    if flags & (int(mi.BSDFFlags.DeltaReflection) | int(mi.BSDFFlags.DeltaTransmission)):
        return 0.0
    if not flags & int(mi.BSDFFlags.Glossy):
        return math.inf
    widths = []
    params = mi.traverse(bsdf)
    for key in params.keys():
        # Nested BSDFs (twosided, blendbsdf) prefix their keys; a plain float ends in its name, a texture's
        # values in .value or .data (a transform such as alpha.to_uv is not a roughness).
        parts = key.split(".")
        names = [p for p in parts if p in _ROUGHNESS_KEYS]
        if not names or parts[-1] not in (names[-1], "value", "data"):
            continue
        values = np.asarray(params[key], dtype=np.float64).ravel()
        if values.size == 0 or not np.isfinite(values).all():
            continue
        smallest = float(values.min())
        widths.append(smallest * smallest if names[-1] == "roughness" else smallest)
    return max(min(widths), 0.0) if widths else DEFAULT_GLOSSY


def bsdf_mirrors(mi, bsdf) -> bool:
    """Whether all the BSDF shows is a reflection: a glossy or smooth reflection lobe, no diffuse one, no transmission.

    On such a surface (a metal) the colour moves with the reflected scene, not
    with the surface, so temporal reuse may follow the reflection instead.
    """
    if bsdf is None:
        return False
    flags, f = int(bsdf.flags()), mi.BSDFFlags
    reflects = flags & (int(f.GlossyReflection) | int(f.DeltaReflection))
    return bool(reflects) and not flags & (int(f.DiffuseReflection) | int(f.Transmission))


def _shape_table(mi, scene, of, missing):
    import drjit as dr

    if mi.variant().startswith("scalar"):
        return None
    values = {}
    for shape in scene.shapes():
        shape_id = int(dr.reinterpret_array(mi.UInt32, mi.ShapePtr(shape))[0])
        values[shape_id] = of(mi, shape.bsdf())
    table = [missing] * (max(values) + 1)
    for shape_id, value in values.items():
        table[shape_id] = value
    return tuple(table)


def shape_lobes(mi, scene) -> tuple[float, ...] | None:
    """Every shape's lobe width, indexed by the shape index of the aux pass.

    None on the scalar variants, which write a pointer there rather than a
    registry id. A scene of diffuse shapes only gets a table too: that every
    shape is diffuse is what lets temporal reuse skip its stale-shading test.
    """
    return _shape_table(mi, scene, bsdf_lobe, math.inf)


def shape_mirrors(mi, scene) -> tuple[bool, ...] | None:
    """Every shape's ``bsdf_mirrors``, indexed like ``shape_lobes``; None on the scalar variants."""
    return _shape_table(mi, scene, bsdf_mirrors, False)
