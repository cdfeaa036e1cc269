"""The specular guide pass: what a perfect mirror would show, on surfaces with a view-dependent lobe.

On a glossy or smooth surface the colour holds a reflection that no other
buffer shows: albedo and normal are smooth over a metal sphere, so to the
network the edge of a reflected softbox or of the horizon is noise like any
other. Following the mirror direction about the shading normal finds those
edges without noise. The chain goes on through surfaces with no diffuse lobe
(metals, a glass's reflection) and ends at one with a diffuse lobe, which
gives its albedo (as OIDN's first-diffuse-hit albedo does), at an emitter,
which gives its radiance, or at the environment. Diffuse surfaces and misses
get 0. The guide is sharper than a rough metal's true reflection: it says
where the reflected content changes, not how it looks.

It is a pass of its own, at a quarter of the aux pass's samples: its mirror
rays go every which way, and inside the aux pass they cost the same whether
a sample traced them or not (Dr.Jit runs the whole wavefront). At 256^2 on
glossy-metals the aux pass took 21.8 ms at 16 spp, and 46.0 ms with the guide
in it.
"""

from __future__ import annotations

PLUGIN = "online_denoise_guide"
# Mirror bounces followed through surfaces without a diffuse lobe: a metal sphere seen in a glossy floor
# reflects the sky only at the second.
BOUNCES = 2
# The pass's samples as a share of the aux pass's: at 16 aux spp, 4 took 12.3 ms on glossy-metals
# (256^2), 8 took 20.8 and 2 took 8.8; at 4 the reflections' edges are already clean.
SHARE = 0.25
_registered: set[str] = set()  # Mitsuba keeps a plugin registry per variant


def integrator(mi) -> dict | None:
    """The guide integrator's description for ``mi.load_dict``; None on the scalar variants.

    Scalar variants run Python integrators one ray at a time, which would
    cost more than the renders; there the guide is 0 (what a diffuse surface has).
    """
    if mi.variant().startswith("scalar"):
        return None
    if mi.variant() not in _registered:
        _register(mi)
    return {"type": PLUGIN}


def _register(mi) -> None:
    class GuideIntegrator(mi.SamplingIntegrator):
        def sample(self, scene, sampler, ray, medium=None, active=True):
            si = scene.ray_intersect(ray, mi.RayFlags.All, True, active)
            return mirror_chain(mi, scene, ray, si, active & si.is_valid()), active, []

    mi.register_integrator(PLUGIN, lambda props: GuideIntegrator(props))
    _registered.add(mi.variant())


def mirror_chain(mi, scene, ray, si, active):
    """The guide's value for rays ``ray`` that hit ``si``: 0 where the first surface is diffuse."""
    import drjit as dr

    def view_dependent(flags):
        return mi.has_flag(flags, mi.BSDFFlags.Glossy) | mi.has_flag(flags, mi.BSDFFlags.Delta)

    guide = mi.Spectrum(0.0)
    alive = active & view_dependent(si.bsdf(ray).flags())
    d, n = ray.d, si.sh_frame.n
    for _ in range(BOUNCES):
        d = d - 2.0 * dr.dot(d, n) * n
        mirrored = si.spawn_ray(d)
        si = scene.ray_intersect(mirrored, alive)
        hit = alive & si.is_valid()
        # A miss evaluates the environment (if any); a hit on an area light, its emission.
        guide = dr.select(alive, guide + si.emitter(scene, alive).eval(si, alive), guide)
        bsdf = si.bsdf(mirrored)
        flags = bsdf.flags()
        ends = hit & mi.has_flag(flags, mi.BSDFFlags.Diffuse)
        guide = dr.select(ends, guide + dr.clip(bsdf.eval_diffuse_reflectance(si, ends), 0.0, 1.0), guide)
        alive = hit & ~ends & view_dependent(flags)
        n = si.sh_frame.n
    return guide
