"""Contact sheet of the scene library: noisy | denoised | reference, one row per scene.

Each row is a real headless `fly` run on that scene, trained live from random
weights with the chosen preset; the strip is its last frame. Usage:

    .venv/bin/python scripts/contact_sheet.py [--frames 240] [--out docs/scenes.png] [scenes...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from online_denoise.cli import main as cli_main
from renderer import list_scenes


def label(strip: np.ndarray, text: str) -> np.ndarray:
    band = Image.new("RGB", (strip.shape[1], 18), (20, 20, 20))
    ImageDraw.Draw(band).text((6, 3), text, fill=(235, 235, 235))
    return np.concatenate([np.asarray(band), strip], axis=0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scenes", nargs="*", help="default: all built-in scenes")
    p.add_argument("--frames", type=int, default=240)
    p.add_argument("--runs", default="runs/contact-sheet")
    p.add_argument("--out", default="docs/scenes.png")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--spp", type=int, default=4, help="spp of each render of a pair")
    a = p.parse_args()
    names = a.scenes or [s.name for s in list_scenes()]
    rows = []
    for name in names:
        out = Path(a.runs) / name
        code = cli_main(["fly", "--headless", "--scene", name, "--frames", str(a.frames), "--out", str(out),
                         "--save-every", "0", "--reference-spp", "1024", "--preset", a.preset, "--spp", str(a.spp)])
        if code != 0:
            return code
        run = json.loads((out / "run.json").read_text())
        summary, spp = run["summary"], run["config"]["spp"]
        strip = np.asarray(Image.open(out / "strip.png").convert("RGB"))
        rows.append(label(strip, f"{name}: noisy (pair of {spp} spp) {summary['psnr_noisy']:.2f} dB | live denoiser "
                                 f"after {summary['frames']} frames {summary['psnr_denoised']:.2f} dB | 1024 spp"))
    sheet = np.concatenate(rows, axis=0)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
