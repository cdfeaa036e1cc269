"""Offline batch denoising: layer conventions, output fidelity, failures, and never touching inputs."""

import hashlib

import numpy as np
import OpenEXR
import pytest
import torch

from online_denoise.batch import expand_inputs, normal_range, normal_space
from online_denoise.denoiser import save_checkpoint
from online_denoise.errors import UserError
from online_denoise.exr import read_exr, write_channels
from online_denoise.features import FeatureSpec
from online_denoise.model import ModelConfig, UNet
from test_cli import assert_clean_error

H, W = 40, 56
RNG = np.random.default_rng(7)


def planes(dtype=np.float32, h=H, w=W):
    color = RNG.gamma(2.0, 0.25, (h, w, 3)).astype(dtype)
    albedo = RNG.uniform(0.1, 0.9, (h, w, 3)).astype(dtype)
    n = RNG.standard_normal((h, w, 3))
    normal = (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(dtype)
    return color, albedo, normal


def split(prefix, arr, names="RGB"):
    return {f"{prefix}{c}": arr[..., i] for i, c in enumerate(names)}


def exr(path, channels, offset=(0, 0), compression=OpenEXR.ZIP_COMPRESSION):
    h, w = next(iter(channels.values())).shape
    header = {"compression": compression, "type": OpenEXR.scanlineimage,
              "dataWindow": (np.array(offset, np.int32), np.array([offset[0] + w - 1, offset[1] + h - 1], np.int32))}
    write_channels(path, channels, like=header)
    return path


def mitsuba_file(path, dtype=np.float32, offset=(0, 0), normals="nn"):
    color, albedo, normal = planes(dtype)
    channels = {**split("", color), "A": np.ones((H, W), dtype), **split("albedo.", albedo),
                **split(f"{normals}.", normal, "XYZ" if normals == "nn" else "RGB")}
    return exr(path, channels, offset)


def blender_file(path, dtype=np.float16, prefix="ViewLayer."):
    color, albedo, normal = planes(dtype)
    channels = {**split(f"{prefix}Noisy Image.", color), f"{prefix}Noisy Image.A": np.ones((H, W), dtype),
                **split(f"{prefix}Combined.", color * 0), f"{prefix}Combined.A": np.ones((H, W), dtype),
                **split(f"{prefix}Denoising Albedo.", albedo), **split(f"{prefix}Denoising Normal.", normal, "XYZ"),
                f"{prefix}Depth.Z": np.full((H, W), 3.0, np.float32)}
    return exr(path, channels)


def oidn_files(folder, stem="shot"):
    color, albedo, normal = planes()
    exr(folder / f"{stem}.hdr.exr", split("", color))
    exr(folder / f"{stem}.alb.exr", split("", albedo))
    exr(folder / f"{stem}.nrm.exr", split("", normal))
    return folder / f"{stem}.hdr.exr"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig(width=8, depth=3, output="kpn", scales=2)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", UNet(cfg), cfg, FeatureSpec())


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def reference_denoise(checkpoint, color, albedo, normal):
    from online_denoise.denoiser import load_checkpoint

    return load_checkpoint(checkpoint).denoiser().denoise_tiled(color, albedo, normal, tile=4096, overlap=0)


@pytest.mark.parametrize("kind", ["mitsuba-float", "mitsuba-half-offset", "mitsuba-normals", "blender",
                                  "blender-no-prefix", "oidn-files"])
def test_every_naming_convention(cli, tmp_path, checkpoint, kind):
    src = tmp_path / "in"
    src.mkdir()
    if kind == "mitsuba-float":
        f = mitsuba_file(src / "a.exr")
    elif kind == "mitsuba-half-offset":
        f = mitsuba_file(src / "a.exr", np.float16, offset=(7, 11))
    elif kind == "mitsuba-normals":
        f = mitsuba_file(src / "a.exr", normals="normals")
    elif kind == "blender":
        f = blender_file(src / "a.exr")
    elif kind == "blender-no-prefix":
        f = blender_file(src / "a.exr", prefix="")
    else:
        f = oidn_files(src)
    before = digest(src)
    proc = cli("denoise", src, "-o", tmp_path / "out", "--checkpoint", checkpoint)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert digest(src) == before, "an input changed"
    out_name = "shot.exr" if kind == "oidn-files" else "a.exr"
    out = read_exr(tmp_path / "out" / out_name)
    inp = read_exr(f)
    assert out.header["dataWindow"][0].tolist() == inp.header["dataWindow"][0].tolist()
    assert out.header["compression"] == inp.header["compression"]
    assert out.header["online_denoise_source"] == str(f.resolve())
    color_name = next(n for n in inp.channels if n.endswith("R") and "Noisy" in n) if "blender" in kind else "R"
    assert out.channels["R"].dtype == inp.channels[color_name].dtype  # half stays half
    # The denoised pixels are what the Denoiser gives for these buffers.
    from online_denoise.batch import LayerOptions, gather_inputs

    got = gather_inputs(inp, ("albedo", "normal"), LayerOptions())
    want = reference_denoise(checkpoint, got.color, got.albedo, got.normal).astype(out.channels["R"].dtype)
    np.testing.assert_allclose(np.stack([out.channels[c] for c in "RGB"], -1), want, rtol=1e-3, atol=1e-4)
    if "A" in out.channels:
        np.testing.assert_array_equal(out.channels["A"], inp.channels.get("A", inp.channels.get(
            next((n for n in inp.channels if n.endswith("Noisy Image.A")), "A"))))


def test_keep_layers_carries_everything_over_bit_for_bit(cli, tmp_path, checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    f = blender_file(src / "shot.exr")
    proc = cli("denoise", f, "-o", tmp_path / "out", "--checkpoint", checkpoint, "--keep-layers")
    assert proc.returncode == 0, proc.stderr
    inp, out = read_exr(f), read_exr(tmp_path / "out" / "shot.exr")
    for name, px in inp.channels.items():
        np.testing.assert_array_equal(out.channels[name], px, err_msg=name)
        assert out.channels[name].dtype == px.dtype
    assert {"R", "G", "B", "A"} <= set(out.channels)


def test_the_oidn_backend_uses_the_same_layer_handling(cli, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    blender_file(src / "a.exr")
    exr(src / "plain.exr", split("", planes()[0]))  # colour only: OIDN goes without aux
    proc = cli("denoise", src, "-o", tmp_path / "out", "--backend", "oidn")
    assert proc.returncode == 0, proc.stderr
    assert "no albedo layer: denoised without it" in proc.stdout
    out = read_exr(tmp_path / "out" / "a.exr")
    assert out.header["online_denoise_denoiser"].startswith("oidn")
    assert np.isfinite(out.channels["R"].astype(np.float32)).all()


def test_broken_files_are_reported_and_the_rest_is_done(cli, tmp_path, checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    good = mitsuba_file(src / "f_0001.exr")
    mitsuba_file(src / "f_0003.exr")
    (src / "f_0002.exr").write_bytes(b"this is not an EXR")
    (src / "f_0004.exr").write_bytes(good.read_bytes()[:400])  # truncated
    exr(src / "f_0005.exr", {**split("", planes()[0]), **split("nn.", planes()[2], "XYZ")})  # no albedo
    exr(src / "f_0006.exr", {"Y": np.ones((H, W), np.float32)})  # wrong channels
    before = digest(src)
    proc = cli("denoise", src / "f_%04d.exr", "-o", tmp_path / "out", "--checkpoint", checkpoint)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "denoised 2 of 6 files" in proc.stdout and "4 FAILED" in proc.stdout
    assert "f_0002.exr: not a readable OpenEXR file" in proc.stdout
    assert "f_0004.exr: not a readable OpenEXR file" in proc.stdout
    line = next(l for l in proc.stdout.splitlines() if "f_0005.exr" in l)
    assert "the checkpoint needs the albedo buffer, but there is no albedo layer" in line
    assert line.endswith("the file has: (bare) [BGR], nn [XYZ]")
    assert "f_0006.exr: no colour layer" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f_0001.exr", "f_0003.exr"]
    assert digest(src) == before


def test_nan_pixels_come_out_finite(cli, tmp_path, checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    color, albedo, normal = planes()
    color[5:9, 5:9] = np.nan
    color[20, 20] = np.inf
    exr(src / "nan.exr", {**split("", color), **split("albedo.", albedo), **split("nn.", normal, "XYZ")})
    proc = cli("denoise", src / "nan.exr", "-o", tmp_path / "out", "--checkpoint", checkpoint)
    assert proc.returncode == 0, proc.stderr
    assert "51 non-finite colour values read as 0" in proc.stdout  # 16 pixels x 3 + 1 pixel x 3
    out = read_exr(tmp_path / "out" / "nan.exr")
    assert all(np.isfinite(out.channels[c]).all() for c in "RGB")


def test_glob_with_no_matches(cli, tmp_path, checkpoint):
    assert_clean_error(cli("denoise", str(tmp_path / "*.exr"), "-o", tmp_path / "out", "--checkpoint", checkpoint),
                       "*.exr", "matches no EXR file")


def test_output_folder_equal_to_the_input_folder_is_refused(cli, tmp_path, checkpoint):
    f = mitsuba_file(tmp_path / "a.exr")
    before = f.read_bytes()
    assert_clean_error(cli("denoise", f, "-o", tmp_path, "--checkpoint", checkpoint), "-o", "inputs are never overwritten")
    assert f.read_bytes() == before


def test_skip_existing_resumes(cli, tmp_path, checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        mitsuba_file(src / f"f{i}.exr")
    out = tmp_path / "out"
    assert cli("denoise", src, "-o", out, "--checkpoint", checkpoint).returncode == 0
    stamp = (out / "f1.exr").stat().st_mtime_ns
    (out / "f2.exr").unlink()  # as if the run had died there
    proc = cli("denoise", src, "-o", out, "--checkpoint", checkpoint, "--skip-existing")
    assert proc.returncode == 0 and "denoised 1 of 3 files" in proc.stdout and "2 skipped" in proc.stdout
    assert (out / "f1.exr").stat().st_mtime_ns == stamp and (out / "f2.exr").is_file()


def test_checkpoint_or_backend_is_required(cli, tmp_path):
    proc = cli("denoise", tmp_path, "-o", tmp_path / "out")
    assert proc.returncode == 2 and "--checkpoint" in proc.stderr


def test_tiled_equals_untiled(checkpoint):
    from online_denoise.denoiser import load_checkpoint

    d = load_checkpoint(checkpoint).denoiser()
    color, albedo, normal = planes(h=300, w=260)
    whole = d.denoise_tiled(color, albedo, normal, tile=4096, overlap=0)
    tiled = d.denoise_tiled(color, albedo, normal, tile=96, overlap=160)
    assert np.abs(tiled - whole).max() <= 1e-4
    # and the overlap is what makes it so
    assert np.abs(d.denoise_tiled(color, albedo, normal, tile=96, overlap=0) - whole).max() > 1e-3


def test_input_expansion(tmp_path):
    for name in ("f_1.exr", "f_2.exr", "f_10.exr", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    oidn = tmp_path / "o"
    oidn.mkdir()
    for name in ("a.hdr.exr", "a.alb.exr", "a.nrm.exr"):
        (oidn / name).write_bytes(b"x")
    assert [p.name for p in expand_inputs([str(tmp_path)])] == ["f_1.exr", "f_2.exr", "f_10.exr"]
    assert [p.name for p in expand_inputs([str(tmp_path / "f_%d.exr")])] == ["f_1.exr", "f_2.exr", "f_10.exr"]
    assert [p.name for p in expand_inputs([str(tmp_path / "f_?.exr")])] == ["f_1.exr", "f_2.exr"]
    assert [p.name for p in expand_inputs([str(oidn)])] == ["a.hdr.exr"]
    assert len(expand_inputs([str(tmp_path / "f_1.exr"), str(tmp_path)])) == 3
    with pytest.raises(UserError, match="no such file"):
        expand_inputs([str(tmp_path / "missing.exr")])


def test_normal_conventions_are_detected():
    _, _, n = planes()
    assert normal_range(n, "auto") == "signed"
    assert normal_range(n * 0.5 + 0.5, "auto") == "unsigned"
    assert normal_range(n, "unsigned") == "unsigned"
    facing = n.copy()
    facing[..., 2] = np.abs(facing[..., 2]) + 0.05
    assert normal_space(facing, "auto") == "camera"
    assert normal_space(n, "auto") == "world"


def test_unsigned_normals_are_converted(cli, tmp_path, checkpoint):
    color, albedo, normal = planes()
    f = exr(tmp_path / "u.exr", {**split("", color), **split("albedo.", albedo),
                                 **split("nn.", normal * 0.5 + 0.5, "XYZ")})
    signed = exr(tmp_path / "s.exr", {**split("", color), **split("albedo.", albedo), **split("nn.", normal, "XYZ")})
    outputs = []
    for src in (f, signed):
        proc = cli("denoise", src, "-o", tmp_path / "out", "--checkpoint", checkpoint)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
    assert "normals world-space in [0, 1] (detected)" in outputs[0]
    assert "normals world-space in [-1, 1] (detected)" in outputs[1]
    a, b = read_exr(tmp_path / "out" / "u.exr"), read_exr(tmp_path / "out" / "s.exr")
    np.testing.assert_allclose(a.channels["R"], b.channels["R"], atol=1e-4)


def lit_file(path, layer="ViewLayer.Emit."):
    """A flat grey surface around a bright light, with the light in an emission layer."""
    color, albedo, normal = planes()
    color[:] = 0.2
    emission = np.zeros_like(color)
    emission[16:24, 20:36] = 20.0
    color[16:24, 20:36] = 20.0
    return exr(path, {**split("", color), **split("albedo.", albedo), **split("nn.", normal, "XYZ"),
                      **split(layer, emission)}), color, emission


def test_an_emission_layer_keeps_the_light_out_of_the_surface_around_it(cli, tmp_path, checkpoint):
    from online_denoise.denoiser import load_checkpoint

    f, color, emission = lit_file(tmp_path / "lit.exr")
    proc = cli("denoise", f, "-o", tmp_path / "out", "--checkpoint", checkpoint)
    assert proc.returncode == 0, proc.stderr
    assert "lights kept out of the kernels (emission layer 'ViewLayer.Emit')" in proc.stdout
    got = read_exr(tmp_path / "out" / "lit.exr")
    got = np.stack([got.channels[c] for c in "RGB"], -1)
    inp = read_exr(f)
    from online_denoise.batch import LayerOptions, gather_inputs

    buffers = gather_inputs(inp, ("albedo", "normal"), LayerOptions())
    d = load_checkpoint(checkpoint).denoiser()
    masked = d.denoise_tiled(buffers.color, buffers.albedo, buffers.normal, 4096, 0, emission)
    plain = d.denoise_tiled(buffers.color, buffers.albedo, buffers.normal, 4096, 0)
    np.testing.assert_allclose(got, masked, rtol=1e-3, atol=1e-4)
    ring = np.zeros(color.shape[:2], bool)
    ring[14:26, 18:38] = True
    ring[16:24, 20:36] = False
    # The grey beside the light stays grey with the mask; without it the kernels gather the light.
    assert np.abs(masked[ring] - 0.2).max() < 0.02 < np.abs(plain[ring] - 0.2).max()

    proc = cli("denoise", f, "-o", tmp_path / "off", "--checkpoint", checkpoint, "--emission", "none")
    off = read_exr(tmp_path / "off" / "lit.exr")
    np.testing.assert_allclose(np.stack([off.channels[c] for c in "RGB"], -1), plain, rtol=1e-3, atol=1e-4)


def test_a_named_emission_layer_that_is_missing_is_an_error(cli, tmp_path, checkpoint):
    f = mitsuba_file(tmp_path / "a.exr")
    proc = cli("denoise", f, "-o", tmp_path / "out", "--checkpoint", checkpoint, "--emission", "lights")
    assert proc.returncode == 1 and "no emission layer 'lights'" in proc.stderr and "a.exr" in proc.stderr


def test_a_demodulating_checkpoint_without_an_emission_layer_says_so(cli, tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(width=8, depth=3, output="kpn", scales=2)
    ckpt = save_checkpoint(tmp_path / "demod.pt", UNet(cfg), cfg, FeatureSpec(demodulate=0.05))
    f, _, _ = lit_file(tmp_path / "lit.exr")
    masked = cli("denoise", f, "-o", tmp_path / "a", "--checkpoint", ckpt)
    assert masked.returncode == 0, masked.stderr
    assert "filters over the albedo" not in masked.stdout
    bare = cli("denoise", f, "-o", tmp_path / "b", "--checkpoint", ckpt, "--emission", "none")
    assert bare.returncode == 0, bare.stderr
    assert "no emission layer masks the lights" in bare.stdout
