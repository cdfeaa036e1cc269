#!/usr/bin/env bash
# Idempotent set-up shared by scripts/demo and scripts/test.
#   - checks Python >= 3.10 and creates .venv
#   - installs the CPU build of torch unless an NVIDIA GPU is present
#     (a bare `pip install torch` pulls several GB of CUDA libraries)
#   - makes sure drjit finds libLLVM >= 16: drjit 1.5 with LLVM 14/15 aborts the
#     whole process on the first render. Installs Debian's libllvm19 when run as
#     root, otherwise prints the command.
#   - installs this package in editable mode
# Usage: scripts/setup.sh [--test]   (--test also installs pytest and, as root, xvfb and xdotool)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

say() { printf 'setup: %s\n' "$*" >&2; }
is_root() { [ "$(id -u)" = 0 ]; }
have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
    # Debian packages, as root only; `apt-get update` only when a package is unknown.
    if ! is_root || ! have apt-get; then
        return 1
    fi
    say "installing Debian packages: $*"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    fi
}

# -- Python --------------------------------------------------------------------
python="${PYTHON:-python3}"
if ! have "$python"; then
    say "error: $python not found; install Python >= 3.10 (Debian: apt-get install python3 python3-venv)"
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    say "error: Python >= 3.10 needed, $("$python" --version 2>&1) found"
    exit 1
fi

# -- libLLVM >= 16 for drjit's LLVM backend ---------------------------------------
llvm_major() {
    { ldconfig -p 2>/dev/null | grep -o 'libLLVM[-.][^ ]*' ; ls /usr/lib/*/libLLVM* /usr/lib/libLLVM* 2>/dev/null; } |
        sed -nE 's/.*libLLVM-([0-9]+).*/\1/p; s/.*libLLVM\.so\.([0-9]+).*/\1/p' | sort -n | tail -n 1
}
major="$(llvm_major || true)"
if [ -z "$major" ] || [ "$major" -lt 16 ]; then
    if apt_install libllvm19; then
        major="$(llvm_major || true)"
    fi
fi
if [ -z "$major" ] || [ "$major" -lt 16 ]; then
    say "warning: no libLLVM >= 16 found (newest: ${major:-none}). Mitsuba will fall back to the"
    say "         scalar_rgb variant, about 4x slower. To fix it run:  sudo apt-get install libllvm19"
fi

# -- Xvfb and xdotool, for the tests that open a real window and send it X events -------
if [ "$want_test" = 1 ] && { ! have Xvfb || ! have xdotool; }; then
    apt_install xvfb xauth xdotool ||
        say "Xvfb/xdotool not found: the real-window tests will be skipped (sudo apt-get install xvfb xdotool)"
fi

# -- virtual environment ------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
    if ! "$python" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        apt_install python3-venv || { say "error: python3 -m venv failed; install it: sudo apt-get install python3-venv"; exit 1; }
        "$python" -m venv .venv
    fi
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)

gpu=0
if have nvidia-smi && nvidia-smi -L >/dev/null 2>&1; then
    gpu=1
fi

stamp=".venv/.online-denoise-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) gpu=$gpu"
have_stamp="$(cat "$stamp" 2>/dev/null || true)"
# A test set-up is a superset of a demo set-up.
if { [ "$have_stamp" = "$want test=$want_test" ] || [ "$have_stamp" = "$want test=1" ]; } &&
    .venv/bin/python -c 'import online_denoise, torch' 2>/dev/null; then
    exit 0
fi

if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    if [ "$gpu" = 1 ]; then
        say "NVIDIA GPU found: installing torch with CUDA"
        "${pip[@]}" install torch
    else
        say "no NVIDIA GPU: installing the CPU build of torch"
        # The +cpu local version matches only CPU builds: a local wheelhouse's (pip's
        # find-links) if there is one, else PyTorch's CPU index. Never a plain `torch`
        # from the default index, whose Linux wheels depend on CUDA.
        "${pip[@]}" install "torch==2.13.0+cpu" 2>/dev/null ||
            "${pip[@]}" install torch --index-url https://download.pytorch.org/whl/cpu \
                --extra-index-url https://pypi.org/simple
    fi
fi

extras=""
[ "$want_test" = 1 ] && extras="[test]"
say "installing online-denoise$extras and its dependencies"
"${pip[@]}" install -e ".$extras"
echo "$want test=$want_test" > "$stamp"
