#version 330 core
// The viewer's one draw: a fullscreen triangle that letterboxes the render into the window
// and shows one of the view modes, tonemapped.

#if defined VERTEX_SHADER

uniform vec2 scale;  // fraction of the window the image covers, per axis (letterboxing)
out vec2 uv;

void main() {
    // Three vertices covering the screen; no vertex buffer needed.
    vec2 p = vec2(float((gl_VertexID << 1) & 2), float(gl_VertexID & 2));
    vec2 ndc = p * 2.0 - 1.0;
    uv = (ndc / scale) * 0.5 + 0.5;
    uv.y = 1.0 - uv.y;  // image rows run top to bottom
    gl_Position = vec4(ndc, 0.0, 1.0);
}

#elif defined FRAGMENT_SHADER

#include "tonemap.glsl"

uniform sampler2D denoised;
uniform sampler2D noisy;
uniform sampler2D albedo;
uniform sampler2D normal;
uniform int mode;          // 0 denoised, 1 noisy, 2 albedo, 3 normal, 4 |denoised - noisy|, 5 split
uniform float exposure;    // stops
uniform float divider;     // split position in [0, 1] of the image width
uniform float divider_px;  // half-width of the divider line, in uv units

in vec2 uv;
out vec4 color;

void main() {
    if (any(lessThan(uv, vec2(0.0))) || any(greaterThan(uv, vec2(1.0)))) {
        color = vec4(0.08, 0.08, 0.08, 1.0);  // letterbox bars
        return;
    }
    vec3 c;
    if (mode == 0) {
        c = tonemap(texture(denoised, uv).rgb, exposure);
    } else if (mode == 1) {
        c = tonemap(texture(noisy, uv).rgb, exposure);
    } else if (mode == 2) {
        c = srgb_encode(texture(albedo, uv).rgb);  // reflectance in [0, 1]: no exposure
    } else if (mode == 3) {
        c = texture(normal, uv).rgb * 0.5 + 0.5;  // [-1, 1] shown as [0, 1]
    } else if (mode == 4) {
        c = tonemap(abs(texture(denoised, uv).rgb - texture(noisy, uv).rgb), exposure);
    } else {
        if (abs(uv.x - divider) < divider_px) {
            c = vec3(1.0, 0.85, 0.2);
        } else if (uv.x < divider) {
            c = tonemap(texture(noisy, uv).rgb, exposure);
        } else {
            c = tonemap(texture(denoised, uv).rgb, exposure);
        }
    }
    color = vec4(c, 1.0);
}

#endif
