"""The auxiliary pass: what the camera ray hits first, in one intersection per sample.

Per pixel, averaged over its samples like any film:

  0:3    emission: radiance of a directly seen emitter (an area light, or the
         environment where the ray leaves the scene), 0 elsewhere
  3:6    albedo (the BSDF's diffuse reflectance; unbounded on rough metals)
  6:9    shading normal (0 where the ray leaves the scene, unless it does so through
         the camera's own medium: see ``sample``)
  9:12   world position
  12     shape index (which shape was hit; fractional where a pixel straddles two)

The channels 3:13 are what Mitsuba's ``aov`` integrator gives for
``albedo:albedo,nn:sh_normal,pos:position,si:shape_index``; a test compares
them. Nesting an emission-only integrator in ``aov`` traced every ray twice:
at 256^2, 2 spp on 2 cores that pass took 13.3 ms on the Cornell box and
16.7 ms on the glossy scene, this one 6.8 and 8.3 (the ``aov`` pass without
emission: 5.5 and 6.7).
"""

from __future__ import annotations

PLUGIN = "online_denoise_aux"
AOVS = "albedo:albedo,nn:sh_normal,pos:position,si:shape_index"
EMISSION, ALBEDO, NORMAL, POSITION, SHAPE = slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 12), slice(12, 13)
_registered: set[str] = set()  # Mitsuba keeps a plugin registry per variant


def integrator(mi) -> dict:
    """The aux integrator's description for ``mi.load_dict``, registered with the active variant once.

    Scalar variants run Python integrators one ray at a time, so there
    Mitsuba's ``aov`` integrator wraps a path tracer stopped at the first hit,
    which gives the same channels at twice the intersections.
    """
    if mi.variant().startswith("scalar"):
        return {"type": "aov", "aovs": AOVS, "integrator": {"type": "path", "max_depth": 1}}
    if mi.variant() not in _registered:
        _register(mi)
    return {"type": PLUGIN}


def _register(mi) -> None:
    import drjit as dr

    class AuxIntegrator(mi.SamplingIntegrator):
        def aov_names(self):
            return ["albedo.R", "albedo.G", "albedo.B", "nn.X", "nn.Y", "nn.Z", "pos.X", "pos.Y", "pos.Z", "si.I"]

        def sample(self, scene, sampler, ray, medium=None, active=True):
            # Camera rays are coherent, and saying so lets Embree trace them as packets: at 256^2, 8 spp on
            # sunlit-room this pass took 16.0 ms instead of 25.3, with identical buffers.
            si = scene.ray_intersect(ray, mi.RayFlags.All, True, active)
            # A miss yields the environment emitter (if the scene has one), evaluated along the ray.
            emission = si.emitter(scene, active).eval(si, active)
            hit = active & si.is_valid()
            albedo = dr.select(hit, si.bsdf(ray).eval_diffuse_reflectance(si, hit), 0.0)
            # A zero normal tells the denoiser that a pixel saw nothing but the environment, which has no
            # noise, and it shows such a pixel as rendered. A camera inside a medium (fog) sees that
            # medium's noisy in-scattering wherever its rays leave the scene, so there a miss gets the
            # normal of a surface facing the camera instead. (Mitsuba passes the sensor's medium here.)
            normal = dr.select(hit, si.sh_frame.n, 0.0 if medium is None else -ray.d)
            position = dr.select(hit, si.p, 0.0)
            shape = mi.Float(dr.reinterpret_array(mi.UInt32, si.shape))  # as the aov integrator writes it
            return emission, active, [*albedo, *normal, *position, shape]

    mi.register_integrator(PLUGIN, lambda props: AuxIntegrator(props))
    _registered.add(mi.variant())
