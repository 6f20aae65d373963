#!/usr/bin/env bash
# The one entry point: ./run.sh test | ./run.sh demo
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY=$VENV/bin/python

setup_env() {
    if [ ! -x "$PY" ]; then
        python3 -m venv "$VENV"
        "$PY" -m pip install -q --upgrade pip
    fi
    # Reinstall only when setup.py changed since the last install.
    if [ ! -f "$VENV/.installed" ] || [ setup.py -nt "$VENV/.installed" ]; then
        # torch is pinned: a bare requirement would pull a multi-GB CUDA build.
        "$PY" -m pip install -q torch==2.13.0
        "$PY" -m pip install -q -e '.[test]'
        touch "$VENV/.installed"
    fi
}

case "${1:-}" in
    test)
        shift
        setup_env
        "$VENV/bin/ruff" check .  # the linter (ruff.toml), then the tests
        exec "$PY" -m pytest tests "$@"
        ;;
    demo)
        shift
        setup_env
        exec "$PY" -m train.demo "$@"
        ;;
    gpu)
        shift
        exec bash kernels/gpu_checks.sh "$@"
        ;;
    *)
        echo "usage: ./run.sh test [pytest args] | ./run.sh demo [key.sub=value ...] | ./run.sh gpu [SHARED_DIR]" >&2
        exit 2
        ;;
esac
