#!/usr/bin/env bash
# Retrain the cpu preset's shipped prior, online_denoise/priors/cpu.pt, from the project's own scenes.
#
# Noise2Noise on rendered pairs only: no clean image is rendered or used. The Cornell box is held
# out, so that the benchmark can show the prior helping on a scene it never saw. The checkpoint
# records this command and its settings (online-denoise's checkpoint "meta").
# About 13 minutes on the project's 2-core CPU. It trains with the preset's loss, target clip included;
# the 16-spp aux pass, the gradient-spike clip and the firefly clamp are pinned off, as they were for
# the priors before it: retrained with all three on (358 s), one was +0.28 dB on sunlit-room, +0.21 on
# glossy-metals and -0.13 on the held-out Cornell box (first frame 28.73 -> 26.66), within run-to-run
# noise, and was not shipped. It trains without the learnt demodulation mix (--no-demod-mix): a live run
# widens the prior's head by that one logit, started at a 5% share. A prior trained with the mix on was
# 0.1-0.85 dB worse live on all three scenes, the held-out Cornell box most (docs/measurements.md). tests/test_config.py checks that this command still matches the settings
# the shipped checkpoint records.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/online-denoise train --preset cpu --prior none \
    --scene sunlit-room,glossy-metals,fine-texture --spp 2 --frames-per-scene 48 --steps 6000 \
    --aux-spp 2 --spike-clip 0 --firefly-clamp 0 --crop-focus 0 --no-demod-mix \
    --torch-threads 1 --out online_denoise/priors/cpu.pt "$@"
