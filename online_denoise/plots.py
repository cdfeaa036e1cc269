"""The benchmark's PNG plots (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .color import to_uint8  # noqa: E402
from .files import atomic_write  # noqa: E402

METHOD_STYLE = {"noisy": ("#999999", "noisy (pair average)"), "reused": ("#5a5a5a", "noisy after temporal reuse"),
                "ours": ("#d95f02", "ours (live)"), "oidn": ("#1b9e77", "OIDN balanced"),
                "oidn_reused": ("#7570b3", "OIDN on the reused input")}
STAGE_COLORS = {"render": "#4c8fdb", "reuse": "#76b7b2", "train": "#f28e2b", "infer": "#59a14f", "upload": "#b07aa1"}
METRIC_LABELS = {"psnr": "PSNR (dB, tonemapped) - higher is better", "relmse": "relMSE - lower is better",
                 "ssim": "SSIM - higher is better", "flip": "HDR-FLIP - lower is better"}


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def stage_plot(path: Path, report: dict) -> None:
    """Stacked bar of the mean stage times, next to the measured frame time."""
    steady = report["timing"]["steady"]
    stages = [s for s in STAGE_COLORS if s in steady]
    fig, ax = plt.subplots(figsize=(7, 2.6))
    left = 0.0
    for s in stages:
        ms = steady[s]["mean"]
        ax.barh(["stages (sum)"], [ms], left=left, color=STAGE_COLORS[s], label=f"{s} {ms:.0f} ms")
        left += ms
    ax.barh(["frame (wall)"], [steady["frame"]["mean"]], color="#444444",
            label=f"frame {steady['frame']['mean']:.0f} ms ({report['fps']:.2f} frames/s)")
    ax.set_xlabel("milliseconds per frame (steady state, mean)")
    inline = report.get("config", {}).get("train", {}).get("schedule") == "inline"
    ax.set_title(f"{report['label']}: where the time goes" + ("" if inline else " (training overlaps rendering)"))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, fontsize=8, frameon=False)
    _save(fig, path)


def memory_plot(path: Path, report: dict, records: list[dict]) -> None:
    """Resident memory over the live loop, with the steady-state drift in the title."""
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.plot([r["seconds"] / 60 for r in records], [r["rss_mb"] for r in records], color="#4c8fdb", lw=1)
    mem = report["memory"]
    ax.set_ylim(bottom=0)
    ax.set_xlabel("minutes of live loop")
    ax.set_ylabel("RSS (MiB)")
    drift = mem["drift_mb_per_10min"]
    drift = f"later-half drift {drift:+.1f} MiB / 10 min" if drift is not None else "drift: needs 10 min or more"
    ax.set_title(f"{report['label']}: resident memory ({drift})", fontsize=9)
    ax.grid(alpha=0.3)
    _save(fig, path)


def quality_plot(path: Path, report: dict, x: str = "frame") -> None:
    """The four metrics over the run, one curve per method."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    for ax, metric in zip(axes.ravel(), ("psnr", "relmse", "ssim", "flip")):
        for method, rows in report["quality"].items():
            if not rows:
                continue
            color, label = METHOD_STYLE[method]
            ax.plot([r[x] for r in rows], [r[metric] for r in rows], "o-", color=color, label=label, markersize=3)
        ax.set_title(METRIC_LABELS[metric], fontsize=9)
        ax.set_xlabel("frame" if x == "frame" else "seconds of live training")
        if metric == "relmse":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{report['label']}: quality against {report['reference']['spp']}-spp references")
    fig.tight_layout()
    _save(fig, path)


def crop_rows(frames: list[int]) -> list[int]:
    """Indices of the first judged frame, the one nearest the run's middle, and the last.

    Not the middle of the list: a --seconds run judges several frames at its end, so that would be one of them.
    """
    middle = min(range(len(frames)), key=lambda k: abs(frames[k] - frames[-1] / 2))
    return sorted({0, middle, len(frames) - 1})


def crop_grid(path: Path, judged: list, refs: dict, crop: int = 96, zoom: int = 2) -> None:
    """Rows: early, middle and last judged frames; columns: noisy | ours | OIDN (when judged) | reference.

    The crop is centred on where OIDN and ours disagree most with the reference,
    so the grid shows the hard part of the frame, not an easy wall.
    """
    picks = crop_rows([j.frame for j in judged])

    def columns(j, ref):  # OIDN's column only where the run judged it (not with --no-oidn)
        return [(n, im) for n, im in (("noisy", j.noisy), ("ours", j.ours), ("OIDN", j.oidn), ("reference", ref))
                if im is not None]

    rows = []
    for k in picks:
        j = judged[k]
        ref = refs[j.frame]
        h, w = ref.shape[:2]
        c = min(crop, h, w)
        err = np.abs(to_uint8(j.ours).astype(float) - to_uint8(ref)).mean(-1)
        y, x = np.unravel_index(np.argmax(_box(err, c)), err.shape)
        y0, x0 = int(np.clip(y - c // 2, 0, h - c)), int(np.clip(x - c // 2, 0, w - c))
        tiles = [to_uint8(im[y0:y0 + c, x0:x0 + c]) for _, im in columns(j, ref)]
        row = np.concatenate([np.pad(t.repeat(zoom, 0).repeat(zoom, 1), ((2, 2), (2, 2), (0, 0))) for t in tiles], 1)
        rows.append(row)
    image = np.concatenate(rows, 0)
    fig, ax = plt.subplots(figsize=(image.shape[1] / 100, image.shape[0] / 100 + 0.5))
    ax.imshow(image, interpolation="nearest")
    names = [n for n, _ in columns(judged[picks[0]], refs[judged[picks[0]].frame])]
    ax.set_xticks([(i + 0.5) * image.shape[1] / len(names) for i in range(len(names))], names)
    ax.set_yticks([(i + 0.5) * image.shape[0] / len(picks) for i in range(len(picks))],
                  [f"frame {judged[k].frame}" for k in picks])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    _save(fig, path)


def _box(err: np.ndarray, size: int) -> np.ndarray:
    """Sum of err over a size x size window centred on each pixel (via an integral image)."""
    s = np.pad(err, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    h, w = err.shape
    r = size // 2
    ys, xs = np.arange(h), np.arange(w)
    y0, y1 = np.clip(ys - r, 0, h), np.clip(ys + r, 0, h)
    x0, x1 = np.clip(xs - r, 0, w), np.clip(xs + r, 0, w)
    return s[y1][:, x1] - s[y0][:, x1] - s[y1][:, x0] + s[y0][:, x0]


def comparison_plot(path: Path, reports: list[dict]) -> None:
    """PSNR and FLIP against seconds, one curve per run (target), OIDN dotted in the same colour."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(reports):
        c = colors[i % len(colors)]
        for ax, metric in zip(axes, ("psnr", "flip")):
            ours, oidn = r["quality"]["ours"], r["quality"].get("oidn", [])  # none: judged without OIDN
            ax.plot([q["seconds"] for q in ours], [q[metric] for q in ours], "o-", color=c, markersize=3,
                    label=r["label"])
            ax.plot([q["seconds"] for q in oidn], [q[metric] for q in oidn], ":", color=c, alpha=0.7)
    for ax, metric in zip(axes, ("psnr", "flip")):
        ax.set_title(METRIC_LABELS[metric], fontsize=9)
        ax.set_xlabel("seconds of live training")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title="solid: ours, dotted: OIDN on the same frames", title_fontsize=7)
    fig.suptitle(f"{reports[0]['scene']}: training targets compared at equal wall-clock time")
    fig.tight_layout()
    _save(fig, path)
