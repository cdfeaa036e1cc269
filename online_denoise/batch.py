"""Offline denoising of EXR sequences, with a trained checkpoint or with OIDN.

Finds the colour, albedo and normal in each file by their layer names
(Mitsuba AOVs, Blender's denoising passes, OIDN's separate files), denoises
with the same ``Denoiser`` the live loop uses (tiled, so memory stays bounded
on large frames), and writes EXRs that keep the input's data window, pixel
type and compression. Inputs are never overwritten and every write is atomic.
"""

from __future__ import annotations

import glob
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .errors import UserError
from .exr import ExrError, ExrImage, read_exr, write_channels
from .progress import Progress

COLOR_LAYERS = ("Noisy Image", "", "Combined", "color", "rgb", "beauty", "RGBA")
ALBEDO_LAYERS = ("Denoising Albedo", "albedo", "alb", "Albedo", "DiffCol")
NORMAL_LAYERS = ("Denoising Normal", "nn", "normals", "normal", "nrm", "sh_normal", "Normal", "N")
# Directly seen emitters: Blender's Emission pass, or an AOV named so. Optional for every backend.
EMISSION_LAYERS = ("Emit", "emission")  # matched case-insensitively, with or without a view-layer prefix
OIDN_SUFFIXES = {"color": ".hdr.exr", "albedo": ".alb.exr", "normal": ".nrm.exr"}
RGB_SETS = (("R", "G", "B"), ("X", "Y", "Z"), ("r", "g", "b"), ("x", "y", "z"))
CAMERA_SPACE_FRACTION = 0.97  # normals facing +z this often are taken to be camera-space


class BatchError(UserError):
    pass


# -- inputs -------------------------------------------------------------------------

def _is_aux_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(OIDN_SUFFIXES["albedo"]) or name.endswith(OIDN_SUFFIXES["normal"])


def _printf_matches(spec: str) -> list[Path] | None:
    """Files matching a printf pattern in the file name (frame_%04d.exr), or None if it is not one."""
    p = Path(spec).expanduser()
    m = re.search(r"%(0?)(\d*)d", p.name)
    if m is None:
        return None
    digits = r"\d{%s,}" % m.group(2) if m.group(1) and m.group(2) else r"\d+"
    regex = re.compile(re.escape(p.name[: m.start()]) + digits + re.escape(p.name[m.end():]))
    folder = p.parent if str(p.parent) else Path(".")
    return [q for q in folder.iterdir() if regex.fullmatch(q.name)] if folder.is_dir() else []


def _frame_order(path: Path):
    # frame_2 before frame_10
    return [str(path.parent)] + [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path.name)]


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, globs, folders and printf patterns (frame_%04d.exr) to an ordered list of EXR files.

    OIDN-style ``.alb.exr`` / ``.nrm.exr`` files found by a folder, glob or
    pattern are auxiliaries of their ``.hdr.exr``, not frames of their own.
    """
    found: list[Path] = []
    for spec in inputs:
        p = Path(spec).expanduser()
        printf = _printf_matches(spec)
        if printf is not None:
            matches, kind = printf, "printf pattern"
        elif p.is_dir():
            matches, kind = [q for q in p.iterdir() if q.suffix.lower() == ".exr"], "folder"
        elif any(ch in spec for ch in "*?["):
            matches, kind = [Path(m) for m in glob.glob(str(p))], "glob"
        elif p.is_file():
            found.append(p)
            continue
        else:
            raise BatchError(f"{spec}: no such file, folder, glob or printf pattern")
        matches = [q for q in matches if q.is_file() and not _is_aux_file(q)]
        if not matches:
            raise BatchError(f"{spec}: the {kind} matches no EXR file")
        found += matches
    unique = {q.resolve(): q for q in found}
    return sorted(unique.values(), key=_frame_order)


# -- layers -------------------------------------------------------------------------

@dataclass
class Buffer:
    """One RGB(A)-like layer found in a file."""
    source: Path
    layer: str
    names: tuple[str, str, str]  # the three channel names
    alpha: str | None = None

    def pixels(self, image: ExrImage) -> np.ndarray:
        return np.stack([image.channels[n] for n in self.names], axis=-1).astype(np.float32)


def _layer_matches(layer: str, wanted: str) -> bool:
    if wanted == "":
        return layer == ""
    low, want = layer.lower(), wanted.lower()
    return low == want or low.endswith("." + want)  # with a view-layer prefix such as "ViewLayer."


def _rgb_of(image: ExrImage, layer: str) -> Buffer | None:
    suffixes = set(image.layers().get(layer, []))
    for names in RGB_SETS:
        if set(names) <= suffixes:
            full = tuple(f"{layer}.{n}" if layer else n for n in names)
            alpha = next((f"{layer}.{a}" if layer else a for a in ("A", "a") if a in suffixes), None)
            return Buffer(image.path, layer, full, alpha)
    return None


def find_buffer(image: ExrImage, candidates: tuple[str, ...], override: str | None) -> Buffer | None:
    layers = image.layers()
    wanted = (override,) if override is not None else candidates
    for name in wanted:
        for layer in layers:
            if _layer_matches(layer, name):
                buf = _rgb_of(image, layer)
                if buf is not None:
                    return buf
    return None


@dataclass
class Inputs:
    color: np.ndarray
    alpha: np.ndarray | None
    albedo: np.ndarray | None
    normal: np.ndarray | None
    color_buffer: Buffer
    notes: list[str] = field(default_factory=list)
    emission: np.ndarray | None = None


def _sibling(path: Path, kind: str) -> Path | None:
    name = path.name
    if not name.lower().endswith(OIDN_SUFFIXES["color"]):
        return None
    stem = name[: -len(OIDN_SUFFIXES["color"])]
    candidate = path.with_name(stem + OIDN_SUFFIXES[kind])
    return candidate if candidate.is_file() else None


def normal_range(normal: np.ndarray, mode: str) -> str:
    """'signed' ([-1, 1]) or 'unsigned' ([0, 1], stored as n * 0.5 + 0.5); detected unless given."""
    if mode != "auto":
        return mode
    valid = normal[np.abs(normal).sum(-1) > 0]
    if valid.size == 0 or valid.min() < -0.01:
        return "signed"
    as_signed = np.abs(np.linalg.norm(valid, axis=-1) - 1).mean()
    as_unsigned = np.abs(np.linalg.norm(valid * 2 - 1, axis=-1) - 1).mean()
    return "unsigned" if as_unsigned < as_signed else "signed"


def normal_space(normal: np.ndarray, mode: str) -> str:
    """'camera' when nearly every normal faces the viewer (+z), else 'world'; detected unless given."""
    if mode != "auto":
        return mode
    valid = normal[np.linalg.norm(normal, axis=-1) > 0.5]
    if valid.size == 0:
        return "world"
    return "camera" if (valid[:, 2] > 0).mean() >= CAMERA_SPACE_FRACTION else "world"


@dataclass
class LayerOptions:
    color: str | None = None
    albedo: str | None = None
    normal: str | None = None
    emission: str | None = None  # a layer name, "none" to ignore any, or None: found by name
    normal_range: str = "auto"
    normal_space: str = "auto"


def gather_inputs(image: ExrImage, needs: tuple[str, ...], opts: LayerOptions, required: bool = True) -> Inputs:
    """Find colour (always) and the auxiliary buffers in ``needs``.

    A missing auxiliary is an error naming it and listing the file's layers when
    ``required`` (a checkpoint trained with it), and is simply left out otherwise (OIDN).
    The emission layer is always optional, unless named by ``opts.emission``.
    """
    color_buf = find_buffer(image, COLOR_LAYERS, opts.color)
    if color_buf is None:
        what = f"layer '{opts.color}'" if opts.color is not None else "colour layer"
        raise ExrError(f"{image.path}: no {what} with R, G, B channels (the file has: {image.describe_layers()})")
    color = color_buf.pixels(image)
    alpha = image.channels[color_buf.alpha].astype(np.float32) if color_buf.alpha else None
    found: dict[str, np.ndarray | None] = {"albedo": None, "normal": None}
    notes = []
    for kind, candidates, override in (("albedo", ALBEDO_LAYERS, opts.albedo),
                                       ("normal", NORMAL_LAYERS, opts.normal)):
        if kind not in needs:
            continue
        buf = find_buffer(image, candidates, override)
        source_image = image
        if buf is None and (sib := _sibling(image.path, kind)) is not None:
            source_image = read_exr(sib)
            if source_image.shape != image.shape:
                raise ExrError(f"{sib}: is {source_image.shape}, its colour file {image.path.name} is {image.shape}")
            buf = find_buffer(source_image, ("",) + candidates, override)
        if buf is None and not required:
            notes.append(f"no {kind} layer: denoised without it")
            continue
        if buf is None:
            name = f"layer '{override}'" if override is not None else (
                f"{kind} layer (tried: {', '.join(repr(c) for c in candidates)})")
            raise ExrError(f"{image.path}: the checkpoint needs the {kind} buffer, but there is no {name}; "
                           f"the file has: {image.describe_layers()}")
        px = buf.pixels(source_image)
        if kind == "normal":
            rng = normal_range(px, opts.normal_range)
            if rng == "unsigned":
                px = px * 2.0 - 1.0
            space = normal_space(px, opts.normal_space)  # judged on signed normals: [0, 1] ones all face +z
            notes.append(f"normals {space}-space in {'[0, 1]' if rng == 'unsigned' else '[-1, 1]'}"
                         f"{' (detected)' if opts.normal_range == 'auto' else ''}")
        found[kind] = px
    emission = None
    if "emission" in needs and opts.emission != "none":
        buf = find_buffer(image, EMISSION_LAYERS, opts.emission)
        if buf is None and opts.emission is not None:
            raise ExrError(f"{image.path}: no emission layer '{opts.emission}' with R, G, B channels "
                           f"(the file has: {image.describe_layers()})")
        if buf is not None:
            emission = buf.pixels(image)
            notes.append(f"lights kept out of the kernels (emission layer '{buf.layer}')")
    return Inputs(color, alpha, found["albedo"], found["normal"], color_buf, notes, emission)


# -- denoising and writing ------------------------------------------------------------

@dataclass
class BatchOptions:
    out_dir: Path
    layers: LayerOptions = field(default_factory=LayerOptions)
    keep_layers: bool = False
    skip_existing: bool = False


def output_path(src: Path, out_dir: Path) -> Path:
    name = src.name
    if name.lower().endswith(OIDN_SUFFIXES["color"]):
        name = name[: -len(OIDN_SUFFIXES["color"])] + ".exr"
    return out_dir / name


def _assemble(image: ExrImage, inputs: Inputs, denoised: np.ndarray, keep_layers: bool) -> dict[str, np.ndarray]:
    """Denoised RGB as the bare R, G, B (what viewers show), alpha passed through, and the rest if asked."""
    dtype = image.channels[inputs.color_buffer.names[0]].dtype
    out = {c: denoised[..., i].astype(dtype) for i, c in enumerate("RGB")}
    if inputs.alpha is not None:
        out["A"] = image.channels[inputs.color_buffer.alpha]
    if keep_layers:
        for name, px in image.channels.items():
            if name in out:  # a bare noisy colour is kept under "noisy."
                out[f"noisy.{name}"] = px
            else:
                out[name] = px
    return out


@dataclass
class FileResult:
    source: Path
    target: Path | None
    status: str  # "ok", "skipped", "failed"
    message: str = ""
    seconds: float = 0.0


def denoise_file(src: Path, backend: "Backend", options: BatchOptions, inputs_resolved: set[Path]) -> FileResult:
    target = output_path(src, options.out_dir)
    if target.resolve() in inputs_resolved:
        return FileResult(src, None, "failed", f"{src}: the output {target} would overwrite an input; "
                                               f"choose another -o folder")
    if options.skip_existing and target.is_file():
        return FileResult(src, target, "skipped", "exists")
    start = time.perf_counter()
    try:
        image = read_exr(src)
        inputs = gather_inputs(image, backend.needs, options.layers, backend.required)
        if not np.isfinite(inputs.color).all():
            inputs.notes.append(f"{int((~np.isfinite(inputs.color)).sum())} non-finite colour values read as 0")
        denoised = backend.run(inputs)
        metadata = {"online_denoise_source": str(src.resolve()), "online_denoise_version": __version__,
                    "online_denoise_denoiser": backend.name}
        write_channels(target, _assemble(image, inputs, denoised, options.keep_layers), like=image.header,
                       metadata=metadata)
    except ExrError as e:
        return FileResult(src, target, "failed", str(e))
    return FileResult(src, target, "ok", "; ".join(inputs.notes), time.perf_counter() - start)


@dataclass
class Backend:
    name: str  # recorded in each output's header: the checkpoint path, or "oidn"
    needs: tuple[str, ...]  # auxiliary buffers to look for
    required: bool  # whether a missing auxiliary is an error
    run: object  # Inputs -> H x W x 3 denoised


def network_backend(denoiser, checkpoint: str, tile: int, overlap: int) -> Backend:
    def run(inputs: Inputs) -> np.ndarray:
        if denoiser.spec.demodulate and inputs.emission is None:
            # A light's albedo is 0; demodulated, it leaks into the pixels around it unless it is masked.
            inputs.notes.append("the checkpoint filters over the albedo (--demodulate) and no emission layer "
                                "masks the lights: a light in view may leave a bright rim")
        if "specular" in denoiser.spec.features:
            # The guide comes from the live renderer's own pass; no file format carries it.
            inputs.notes.append("the checkpoint also reads the live renderer's specular guide, which files do not "
                                "carry: it sees 0 there, as on a diffuse surface")
        return denoiser.denoise_tiled(inputs.color, inputs.albedo, inputs.normal, tile, overlap, inputs.emission)

    # The emission layer is looked for but optional: without it lights are filtered like any pixel.
    needs = tuple(f for f in denoiser.spec.features[1:] if f != "specular")
    return Backend(str(Path(checkpoint).resolve()), (*needs, "emission"), True, run)


def oidn_backend() -> Backend:
    from .oidn import OIDN_QUALITY, oidn_denoise

    def run(inputs: Inputs) -> np.ndarray:
        return oidn_denoise(inputs.color, inputs.albedo, inputs.normal)

    return Backend(f"oidn ({OIDN_QUALITY})", ("albedo", "normal"), False, run)


def run_batch(files: list[Path], backend: Backend, options: BatchOptions) -> int:
    """Denoise every file; a failure is reported and the run goes on. Returns the exit status."""
    options.out_dir.mkdir(parents=True, exist_ok=True)
    inputs_resolved = {f.resolve() for f in files}
    for f in files:
        for kind in ("albedo", "normal"):
            if (sib := _sibling(f, kind)) is not None:
                inputs_resolved.add(sib.resolve())
    progress = Progress(len(files), "denoising", unit="frames")
    results = []
    for f in files:
        r = denoise_file(f, backend, options, inputs_resolved)
        results.append(r)
        if r.status == "failed":
            if progress.enabled:
                sys.stderr.write("\n")
            print(f"online-denoise: failed: {r.message}", file=sys.stderr)
        progress.update(1, f.name)
    progress.close()
    ok = [r for r in results if r.status == "ok"]
    failed = [r for r in results if r.status == "failed"]
    skipped = [r for r in results if r.status == "skipped"]
    secs = sum(r.seconds for r in ok)
    notes = sorted({r.message for r in ok if r.message})
    print(f"denoised {len(ok)} of {len(files)} files into {options.out_dir}"
          f"{f', {len(skipped)} skipped (already there)' if skipped else ''}"
          f"{f', {len(failed)} FAILED' if failed else ''}"
          f"{f' ({len(ok) / secs:.2f} frames/s)' if ok and secs > 0 else ''}")
    for n in notes:
        print(f"  {n}")
    for r in failed:
        print(f"  failed: {r.message}")
    return 1 if failed else 0
