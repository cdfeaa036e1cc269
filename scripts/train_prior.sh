#!/usr/bin/env bash
# Retrain the cpu preset's shipped prior, online_denoise/priors/cpu.pt, from the project's own scenes.
#
# Noise2Noise on rendered pairs only: no clean image is rendered or used. The Cornell box is held
# out, so that the benchmark can show the prior helping on a scene it never saw. The checkpoint
# records this command and its settings (online-denoise's checkpoint "meta").
# About 9 minutes on the project's 2-core CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/online-denoise train --preset cpu --prior none \
    --scene sunlit-room,glossy-metals,fine-texture --spp 2 --frames-per-scene 48 --steps 3000 \
    --torch-threads 1 --out online_denoise/priors/cpu.pt "$@"
