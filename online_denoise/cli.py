"""``online-denoise``: one command, several subcommands, shared flag names.

Run with no arguments it flies through the default scene: in a window when a
display is available, headless otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import UserError

SUBCOMMANDS = ("fly", "scenes")


def _parser() -> argparse.ArgumentParser:
    from .config import add_common_flags

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

    sub.add_parser("scenes", help="list the built-in scenes")
    return p


def _cmd_scenes(args) -> int:
    from renderer import list_scenes

    scenes = list_scenes()
    width = max((len(s.name) for s in scenes), default=0)
    for s in scenes:
        print(f"{s.name:<{width}}  {s.description}")
    return 0


def _display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _cmd_fly(args) -> int:
    from renderer import Renderer, RenderConfig, resolve_scene

    from .config import resolve
    from .denoiser import load_checkpoint, select_device
    from .files import ensure_writable_dir
    from .headless import HeadlessOptions, run_headless
    from .session import Session, SessionConfig

    if args.frames is not None and args.frames < 1:
        raise UserError(f"--frames {args.frames}: expected at least 1")
    if args.save_every < 0 or args.reference_spp < 0:
        raise UserError("--save-every and --reference-spp must not be negative")
    device = select_device(args.device)
    run = resolve(args, device.type)
    scene = resolve_scene(args.scene)  # fail on a bad name before anything slow
    out = ensure_writable_dir(args.out or Path("runs") / scene.name)
    checkpoint = load_checkpoint(args.checkpoint, expect=run.features) if args.checkpoint else None

    headless = args.headless
    if not headless and not _display_available():
        print("online-denoise: no display found ($DISPLAY is unset); running headless", file=sys.stderr)
        headless = True

    width, height = run.res
    renderer = Renderer(RenderConfig(scene=args.scene, width=width, height=height, spp=run.spp,
                                     variant=args.variant, seed=args.seed, path=args.path))
    session = Session(renderer, SessionConfig(run.model, run.features, run.train, str(device), args.ring),
                      checkpoint)
    config = {**run.to_dict(), "scene": str(renderer.scene_info.xml), "variant": renderer.variant,
              "device": str(device), "checkpoint": args.checkpoint}
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
    handlers = {"fly": _cmd_fly, "scenes": _cmd_scenes}
    from renderer import RendererError

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
