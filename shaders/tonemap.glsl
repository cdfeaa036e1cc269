// Display tonemap, shared by every program that shows linear HDR.
// Must match online_denoise/color.py: tonemap() (a test renders through it and compares to 1/255):
// scale by 2^exposure stops, clip to [0, 1], sRGB-encode (IEC 61966-2-1).

vec3 srgb_encode(vec3 x) {
    x = clamp(x, 0.0, 1.0);
    vec3 lo = 12.92 * x;
    vec3 hi = 1.055 * pow(x, vec3(1.0 / 2.4)) - 0.055;
    return mix(lo, hi, step(vec3(0.0031308), x));
}

vec3 tonemap(vec3 linear, float exposure) {
    // NaN shows black and +Inf white, as in color.py.
    vec3 x = linear * exp2(exposure);
    x = mix(x, vec3(0.0), vec3(isnan(x)));
    return srgb_encode(x);
}
