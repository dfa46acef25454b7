#!/usr/bin/env bash
# The whole GPU check of catsdogs in one call (under 8 minutes on one GPU).
#
#   benchmarks/gpu_check.sh                 # on a GPU machine: prints and writes the table
#   benchmarks/gpu_check.sh --cpu           # the same steps, tiny, on a machine without GPU
#   benchmarks/gpu_check.sh --download-wheels   # beforehand, on a machine with network
#
# Written for a bare GPU machine with no network that has Python with JAX (CUDA), PyTorch,
# NumPy, OpenCV, pandas, click and onnxruntime, but not Keras or TensorFlow. It
#  1. makes a virtual environment in .bench/gpu_check/venv that sees those packages
#     (--system-site-packages; when this Python already runs in a virtual environment, that
#     one is used), installs what Keras needs and the machine lacks from the wheels in .whl/
#     (never from the network: pip --no-index), then catsdogs from this checkout with
#     --no-deps (when the build tools are missing it runs the checkout through PYTHONPATH);
#  2. runs benchmarks/gpu_check.py: generated photos plus the built-in sample (nothing to
#     copy: no photo travels beyond what git tracks), prepare at 300 and 128 px, then for the
#     JAX and torch backends, the classic article's model and the default recipe, on the GPU
#     with mixed precision and without and on the CPU: training photos/s, seconds per epoch,
#     peak GPU memory. The table goes to stdout and to .bench/gpu_check/table.md (--table).
# It ends non-zero when a training fails or a GPU run's log does not say "Training on GPU".
#
# Filling .whl/ (ignored by git; it travels with the checkout, about 25 MB): on a machine
# with network, from the checkout's root,
#   benchmarks/gpu_check.sh --download-wheels            # wheels for Python 3.10 to 3.13
#   PY_VERSIONS="3.12" benchmarks/gpu_check.sh --download-wheels   # just the GPU's Python
# which runs `pip download --no-deps` for keras and the pure-Python packages it needs
# (absl-py, namex, rich, markdown-it-py, mdurl, pygments, packaging, typing-extensions;
# setuptools and wheel to build catsdogs) and,
# for each Python version, the compiled ones (h5py, optree) for manylinux x86_64.
# JAX brings ml-dtypes and NumPy; pip takes from .whl/ only what is missing.
#
# Other options go to gpu_check.py: --backends jax,torch  --budget SECONDS  --work DIR
# --table FILE. --no-install skips step 1 (catsdogs and Keras already importable).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
wheels="$root/.whl"
work="$root/.bench/gpu_check"
install=1
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --download-wheels)
            mkdir -p "$wheels"
            "$python" -m pip download --no-deps --dest "$wheels" keras absl-py namex rich \
                markdown-it-py mdurl pygments packaging typing-extensions "setuptools>=77" wheel
            for version in ${PY_VERSIONS:-3.10 3.11 3.12 3.13}; do
                "$python" -m pip download --no-deps --only-binary=:all: --dest "$wheels" \
                    --python-version "$version" --platform manylinux_2_17_x86_64 \
                    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 h5py optree
            done
            du -sh "$wheels"
            exit 0 ;;
        --no-install) install=0; shift ;;
        --work) work=$2; args+=("$1" "$2"); shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
mkdir -p "$work"
work=$(cd "$work" && pwd)

if [ "$install" = 1 ]; then
    started=$SECONDS
    if "$python" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
        venv=$("$python" -c 'import sys; print(sys.prefix)')   # already a virtual environment
    else
        venv="$work/venv"
        # Without ensurepip (Debian's python3 without python3-venv) the machine's own pip,
        # seen through --system-site-packages, does the installing.
        [ -x "$venv/bin/python" ] || "$python" -m venv --system-site-packages "$venv" \
            || "$python" -m venv --system-site-packages --without-pip --clear "$venv"
    fi
    python="$venv/bin/python"
    if ! "$python" -c 'import importlib.util as u, sys; sys.exit(not u.find_spec("keras"))'; then
        [ -d "$wheels" ] || { echo "No keras here and no $wheels folder: see this script's" \
            "header (--download-wheels)." >&2; exit 1; }
        "$python" -m pip install -q --no-index --find-links "$wheels" keras
    fi
    if "$python" -m pip install -q --no-index --find-links "$wheels" --no-deps -e "$root" \
            >"$work/install.log" 2>&1; then
        echo "Installed catsdogs from $root (--no-deps) in $((SECONDS - started)) s."
    else
        echo "catsdogs could not be installed offline (see $work/install.log): running the" \
             "checkout through PYTHONPATH."
        export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
"$python" -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("keras") and
    u.find_spec("catsdogs")))' || { echo "catsdogs or keras is not installed" >&2; exit 1; }
# JAX takes 75 % of the GPU's memory at start unless told otherwise: allocate as needed, so
# that its peak is the model's and the torch runs that follow find the GPU free.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
cd "$root"
if [ ${#args[@]} -gt 0 ]; then
    exec "$python" "$root/benchmarks/gpu_check.py" "${args[@]}"
fi
exec "$python" "$root/benchmarks/gpu_check.py"
