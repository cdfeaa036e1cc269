"""``online-denoise``: one command, several subcommands, shared flag names.

Run with no arguments it flies through the default scene: in a window when a
display is available, headless otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from .errors import UserError
from .memory import keep_freed_blocks

SUBCOMMANDS = ("fly", "bench", "reference", "train", "denoise", "scenes")


def _parser() -> argparse.ArgumentParser:
    from .config import add_common_flags, add_scene_flags

    p = argparse.ArgumentParser(prog="online-denoise", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    fly = sub.add_parser("fly", help="fly through a scene while the denoiser trains live (the default)")
    add_common_flags(fly)
    g = fly.add_argument_group("run")
    g.add_argument("--headless", action="store_true", help="no window, even when a display is available")
    g.add_argument("--frames", type=int, default=None,
                   help="frames to run (default: 300 headless, until the window closes otherwise)")
    g.add_argument("--out", default=None, help="output folder (default runs/<scene>)")
    g.add_argument("--save-every", type=int, default=50, help="write a PNG and EXR every N frames (0: never)")
    g.add_argument("--reference-spp", type=int, default=1024,
                   help="spp of the final reference for the strip and PSNR (0: skip; default 1024)")
    g.add_argument("--exposure", type=float, default=0.0, help="display exposure in stops")
    g.add_argument("--screenshot", default=None, help="window: save a PNG of it when --frames is reached")
    g.add_argument("--view", default="denoised", help="window: first view (denoised, noisy, albedo, normal, "
                   "difference, split)")

    bench = sub.add_parser("bench", help="time every stage and judge quality against references and OIDN")
    add_common_flags(bench)
    g = bench.add_argument_group("benchmark")
    g.add_argument("--frames", type=int, default=300, help="frames of the live loop (default 300)")
    g.add_argument("--seconds", type=float, default=None, help="stop the live loop after this much wall-clock time")
    g.add_argument("--final-window", type=float, default=10.0, metavar="S",
                   help="with --seconds, also judge about 6 frames of the run's last S seconds and report their "
                        "mean, since one frame's quality swings by a dB from frame to frame (default 10; 0: only "
                        "the last frame)")
    g.add_argument("--every", type=int, default=30, help="judge every K-th frame (default 30)")
    g.add_argument("--warmup", type=int, default=5, help="first frames reported apart (default 5)")
    g.add_argument("--reference-spp", type=int, default=1024, help="spp of the references (default 1024)")
    g.add_argument("--cache-dir", default=None, help="reference cache (default ~/.cache/online_denoise/references)")
    g.add_argument("--static-frames", type=int, default=12, help="still frames for temporal stability (0: skip)")
    g.add_argument("--window", action="store_true", help="upload and draw each frame in a window, timing the upload")
    g.add_argument("--label", default="", help="name of this run in tables and comparisons")
    g.add_argument("--no-oidn", action="store_true",
                   help="judge against the references alone, without OIDN (e.g. where pyoidn cannot be installed)")
    g.add_argument("--out", default=None, help="report folder (default runs/bench-<scene>)")
    g.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), default=None,
                   help="print the differences between two reports and exit")

    ref = sub.add_parser("reference", help="render (or reuse) the high-spp references a benchmark judges against")
    add_scene_flags(ref, spp_help="samples per pixel of each reference (default 1024)")
    g = ref.add_argument_group("references")
    g.add_argument("--frames", type=int, default=300, help="frames of the benchmark (default 300)")
    g.add_argument("--every", type=int, default=30, help="every K-th frame is judged (default 30)")
    g.add_argument("--cache-dir", default=None, help="reference cache (default ~/.cache/online_denoise/references)")

    train = sub.add_parser("train", help="train offline on rendered Noise2Noise pairs (how the prior is made)")
    add_common_flags(train)
    g = train.add_argument_group("offline training")
    g.add_argument("--frames-per-scene", type=int, default=48, help="poses along each scene's path (default 48)")
    g.add_argument("--steps", type=int, default=4000, help="training steps (default 4000)")
    g.add_argument("--spp-mix", default="", help="comma-separated spp to cycle through, e.g. 1,2,4,8 (default: --spp)")
    g.add_argument("--out", required=True, help="checkpoint to write")

    den = sub.add_parser("denoise", help="denoise EXR files with a checkpoint or with OIDN")
    den.add_argument("inputs", nargs="+", help="EXR files, folders, globs or printf patterns (frame_%%04d.exr)")
    den.add_argument("-o", "--out", required=True, help="output folder (must not be an input's folder)")
    who = den.add_mutually_exclusive_group(required=True)
    who.add_argument("--checkpoint", help="weights trained live (fly) or offline (train)")
    who.add_argument("--backend", choices=["oidn"], help="denoise with Intel Open Image Denoise instead")
    g = den.add_argument_group("layers")
    g.add_argument("--color", default=None, help="colour layer name (default: found by name)")
    g.add_argument("--albedo", default=None, help="albedo layer name")
    g.add_argument("--normal", default=None, help="normal layer name")
    g.add_argument("--emission", default=None,
                   help="layer of directly seen emitters, kept out of the kernels around them (default: an "
                        "Emit/emission layer if the file has one; none: ignore it)")
    g.add_argument("--normal-range", choices=["auto", "signed", "unsigned"], default="auto",
                   help="normals stored in [-1, 1] (signed) or [0, 1] (unsigned); default: detected")
    g.add_argument("--normal-space", choices=["auto", "world", "camera"], default="auto",
                   help="say which space the normals are in; default: detected and reported")
    g = den.add_argument_group("output")
    g.add_argument("--keep-layers", action="store_true", help="carry every other layer of the input over too")
    g.add_argument("--skip-existing", action="store_true", help="leave outputs that already exist (resume a run)")
    g.add_argument("--tile", type=int, default=512, help="tile side for bounded memory (default 512)")
    g.add_argument("--overlap", type=int, default=160,
                   help="context around each tile; 160 makes tiles match one whole-frame pass (default)")
    g.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda or cuda:N")
    g.add_argument("--precision", default="fp32", help="fp32 (default), bf16, or fp16 on CUDA")

    sub.add_parser("scenes", help="list the built-in scenes")
    return p


def _cmd_scenes(args) -> int:
    from renderer import list_scenes

    scenes = list_scenes()
    width = max((len(s.name) for s in scenes), default=0)
    for s in scenes:
        print(f"{s.name:<{width}}  {s.description}")
    return 0


def _starting_weights(args, run):
    """--checkpoint if given, else the preset's prior when it fits this run's network and features."""
    from .config import prior_path
    from .denoiser import load_checkpoint

    if args.checkpoint:
        return load_checkpoint(args.checkpoint, expect=run.features)
    path = prior_path(run, getattr(args, "prior", "none"))
    if path is None:
        return None
    prior = load_checkpoint(path)
    if run.model.demod_mix and not prior.model_config.demod_mix:
        prior = prior.with_demod_mix()  # one more head logit, the demodulated filtering's share
    # The firefly clamp and demodulation only change what the kernels filter, not the network's inputs,
    # so a prior serves a run with either setting.
    prior.spec = replace(prior.spec, firefly=run.features.firefly, demodulate=run.features.demodulate)
    if prior.spec != run.features:
        # A run that reads more features than the prior starts from it all the same, with zero weights on the
        # new inputs: from random weights it would throw away the prior's whole head start.
        added = [f for f in run.features.features if f not in prior.spec.features]
        prior = prior.widened(run.features)
        if prior is not None and prior.model_config == run.model:
            print(f"online-denoise: starting from the {run.preset.name} prior, its input widened with zero "
                  f"weights for {', '.join(added)}", file=sys.stderr)
    if prior is None or prior.model_config != run.model:
        print(f"online-denoise: the {run.preset.name} prior does not fit this network or feature set; "
              f"starting from random weights", file=sys.stderr)
        return None
    return prior


def _renderer(args, spp: int, seed: int = 0, run=None):
    from renderer import Renderer, RenderConfig, guide

    from .config import parse_res

    width, height = parse_res(args.res)
    return Renderer(RenderConfig(scene=args.scene, width=width, height=height, spp=spp, variant=args.variant,
                                 seed=seed, path=args.path, threads=args.render_threads,
                                 freeze={"auto": None, "on": True, "off": False}[args.freeze_renders],
                                 renders=run.renders if run else 2, target_spp=run.target_spp if run else None,
                                 rr_depth=run.rr_depth if run else None, aux_spp=run.aux_spp if run else None,
                                 early_roulette=run is not None and run.frame_budget_ms is None,
                                 guide_share=guide.SHARE if run and "specular" in run.features.features else 0.0))


def _apply_torch_threads(args) -> None:
    # torch's intra-op pool is one per process, so this is set once, here, before any work.
    if args.torch_threads is not None:
        import torch

        _check_positive(torch_threads=args.torch_threads)
        torch.set_num_threads(args.torch_threads)


def _check_positive(**values) -> None:
    for flag, value in values.items():
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} {value}: expected a positive number")


def _cmd_reference(args) -> int:
    from .bench import _judged_frames
    from .reference import ReferenceCache, render_references

    spp = args.spp or 1024
    _check_positive(spp=spp, frames=args.frames, every=args.every, path_fps=args.path_fps)
    renderer = _renderer(args, spp=1)
    cache = ReferenceCache(args.cache_dir)
    marks = _judged_frames(args.frames, args.every)
    render_references(renderer, [renderer.path.pose(i / args.path_fps) for i in marks], spp, cache)
    print(f"{renderer.scene_info.name}: {len(marks)} references at {spp} spp for frames "
          f"{marks[0]}..{marks[-1]} every {args.every}: {cache.hits} cached, {cache.misses} rendered, in {cache.dir}")
    return 0


def _cmd_bench(args) -> int:
    from .bench import compare, comparison_outputs, load_report, table

    if args.compare:
        print(compare(load_report(args.compare[0]), load_report(args.compare[1])))
        return 0
    _check_positive(frames=args.frames, every=args.every, reference_spp=args.reference_spp, seconds=args.seconds)
    if args.warmup < 0 or args.static_frames < 0:
        raise UserError("--warmup and --static-frames must not be negative")
    if not args.final_window >= 0:  # also refuses nan
        raise UserError(f"--final-window {args.final_window}: expected seconds, 0 or more")
    scenes = [s for s in args.scene.split(",") if s]
    targets = [t for t in args.target.split(",") if t]
    from renderer import resolve_scene

    for name in scenes:
        resolve_scene(name)  # fail on a bad name before any run starts
    if not args.no_oidn:
        from .oidn import require_oidn

        require_oidn()  # before the loop: the comparison comes after it
    single = len(scenes) == 1 and len(targets) == 1
    base = Path(args.out) if args.out else Path("runs") / (f"bench-{resolve_scene(scenes[0]).name}" if single
                                                           else "bench-compare")
    reports = []
    for scene in scenes:
        for target in targets:
            run_args = argparse.Namespace(**{**vars(args), "scene": scene, "target": target})
            out = base if single else base / resolve_scene(scene).name / target
            label = args.label or (target if len(targets) > 1 else resolve_scene(scene).name)
            report = _bench_one(run_args, out, label)
            print(table(report))
            reports.append(report)
    if single:
        print(f"wrote {base}/report.json, frames.csv, quality.csv, stages.png, quality_frames.png, "
              f"quality_seconds.png, crops.png")
    else:
        print(comparison_outputs(base, reports))
    return 0


def _bench_one(args, out: Path, label: str) -> dict:
    from .bench import BenchOptions, run_bench
    from .config import resolve
    from .denoiser import select_device
    from .files import ensure_writable_dir
    from .session import Session

    device = select_device(args.device)
    run = resolve(args, device)
    _apply_torch_threads(args)
    ensure_writable_dir(out)
    checkpoint = _starting_weights(args, run)
    renderer = _renderer(args, run.spp, args.seed, run)
    session = Session(renderer, run.session_config(device, args.ring), checkpoint)
    config = {**run.to_dict(), "scene": str(renderer.scene_info.xml), "variant": renderer.variant,
              "device": str(device), "checkpoint": args.checkpoint, "seconds": args.seconds,
              "start": "checkpoint" if args.checkpoint else ("prior" if checkpoint is not None else "random")}
    options = BenchOptions(out=out, frames=args.frames, seconds=args.seconds, every=args.every, warmup=args.warmup,
                           reference_spp=args.reference_spp, cache_dir=args.cache_dir,
                           static_frames=args.static_frames, path_fps=args.path_fps, window=args.window,
                           label=label, config=config, oidn=not args.no_oidn, final_window=args.final_window)
    try:
        return run_bench(session, options)
    finally:
        session.close()


def _cmd_train(args) -> int:
    import dataclasses

    from .config import resolve
    from .denoiser import select_device
    from .train import OfflineOptions, train_offline

    _check_positive(frames_per_scene=args.frames_per_scene, steps=args.steps)
    try:
        spp_mix = tuple(int(v) for v in args.spp_mix.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--spp-mix {args.spp_mix}: expected comma-separated positive integers") from None
    _check_positive(**{"spp_mix": min(spp_mix, default=None)})
    device = select_device(args.device)
    run = resolve(args, device)
    _apply_torch_threads(args)
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; expected a checkpoint file name")
    from .files import ensure_writable_dir

    ensure_writable_dir(out.parent if str(out.parent) else Path("."))
    init = _starting_weights(args, run)
    model = init.model_config if init is not None else run.model
    scenes = [s for s in args.scene.split(",") if s]
    renderers = []
    for i, name in enumerate(scenes):
        args_i = argparse.Namespace(**{**vars(args), "scene": name})
        renderers.append(_renderer(args_i, run.spp, args.seed + i, run))
    record = {"command": "online-denoise " + " ".join(sys.argv[1:]), "scenes": scenes,
              "frames_per_scene": args.frames_per_scene, "steps": args.steps, "res": list(run.res), "spp": run.spp,
              "spp_mix": list(spp_mix),
              "preset": run.preset.name, "seed": args.seed, "precision": dataclasses.asdict(run.precision)}
    train_offline(renderers, model, run.features, run.train,
                  OfflineOptions(out=out, frames_per_scene=args.frames_per_scene, steps=args.steps, spp_mix=spp_mix,
                                 record=record),
                  device, run.precision, init.state_dict if init is not None else None)
    return 0


def _cmd_denoise(args) -> int:
    from .batch import BatchOptions, LayerOptions, expand_inputs, network_backend, oidn_backend, run_batch

    _check_positive(tile=args.tile)
    if args.overlap < 0:
        raise UserError(f"--overlap {args.overlap}: must not be negative")
    files = expand_inputs(args.inputs)
    out = Path(args.out)
    resolved_out = out.resolve()
    for f in files:
        if f.resolve().parent == resolved_out:
            raise UserError(f"-o {out}: is the folder of the input {f}; inputs are never overwritten, "
                            f"choose another folder")
    from .files import ensure_writable_dir

    ensure_writable_dir(out, "-o")
    if args.backend == "oidn":
        backend = oidn_backend()
    else:
        from .denoiser import load_checkpoint, select_device
        from .precision import choose_precision

        device = select_device(args.device)
        try:
            precision = choose_precision(args.precision, device)
        except ValueError as e:
            raise UserError(str(e)) from None
        denoiser = load_checkpoint(args.checkpoint).denoiser(device, precision)
        backend = network_backend(denoiser, args.checkpoint, args.tile, args.overlap)
    layers = LayerOptions(args.color, args.albedo, args.normal, args.emission, args.normal_range, args.normal_space)
    options = BatchOptions(out, layers, args.keep_layers, args.skip_existing)
    return run_batch(files, backend, options)


def _display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _cmd_fly(args) -> int:
    from renderer import resolve_scene

    from .config import resolve
    from .denoiser import select_device
    from .files import ensure_writable_dir
    from .headless import HeadlessOptions, run_headless
    from .session import Session

    if args.frames is not None and args.frames < 1:
        raise UserError(f"--frames {args.frames}: expected at least 1")
    if args.save_every < 0 or args.reference_spp < 0:
        raise UserError("--save-every and --reference-spp must not be negative")
    device = select_device(args.device)
    run = resolve(args, device)
    _apply_torch_threads(args)
    scene = resolve_scene(args.scene)  # fail on a bad name before anything slow
    out = ensure_writable_dir(args.out or Path("runs") / scene.name)
    checkpoint = _starting_weights(args, run)

    headless = args.headless
    if not headless and not _display_available():
        print("online-denoise: no display found ($DISPLAY is unset); running headless", file=sys.stderr)
        headless = True

    width, height = run.res
    renderer = _renderer(args, run.spp, args.seed, run)
    session = Session(renderer, run.session_config(device, args.ring), checkpoint)
    config = {**run.to_dict(), "scene": str(renderer.scene_info.xml), "variant": renderer.variant,
              "device": str(device), "checkpoint": args.checkpoint,
              "start": "checkpoint" if args.checkpoint else ("prior" if checkpoint is not None else "random")}
    if not headless:
        code = _run_window(session, args, out, config)
        if code is not None:
            return code
    options = HeadlessOptions(frames=args.frames or 300, out=out, save_every=args.save_every,
                              path_fps=args.path_fps, reference_spp=args.reference_spp,
                              exposure=args.exposure, config=config)
    print(f"online-denoise: {scene.name} at {width}x{height}, {run.spp} spp x 2, preset {run.preset.name}, "
          f"{renderer.variant} + torch {device}; {options.frames} frames -> {out}", file=sys.stderr)
    summary = run_headless(session, options)
    print(summary.line(scene.name))
    return 130 if summary.interrupted else 0


def _run_window(session, args, out: Path, config: dict) -> int | None:
    """Run the viewer; None if no window could be opened (the caller then runs headless)."""
    from .viewer.display import VIEW_MODES

    if args.view not in VIEW_MODES:
        raise UserError(f"--view {args.view}: expected one of {', '.join(VIEW_MODES)}")
    try:
        from .viewer.app import ViewerOptions, run_viewer
        from .viewer.window import WindowError

        options = ViewerOptions(out=out, frames=args.frames, exposure=args.exposure, view=args.view,
                                screenshot=Path(args.screenshot) if args.screenshot else None, config=config)
        return run_viewer(session, options)
    except (ImportError, OSError) as e:
        reason = f"the GL libraries did not load ({e})"
    except WindowError as e:
        reason = str(e)
    print(f"online-denoise: could not open a window: {reason}; running headless", file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["fly", *argv]  # the main job needs no arguments
    args = _parser().parse_args(argv)
    handlers = {"fly": _cmd_fly, "bench": _cmd_bench, "reference": _cmd_reference, "train": _cmd_train,
                "denoise": _cmd_denoise, "scenes": _cmd_scenes}
    from renderer import RendererError

    keep_freed_blocks()
    try:
        return handlers[args.command](args)
    except (UserError, RendererError) as e:
        print(f"online-denoise: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("online-denoise: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
