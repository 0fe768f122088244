#!/usr/bin/env bash
# Runs on the GPU machine (the `device` tool), from the repo root, with .wheelhouse carried
# (a copy of ../shared/wheelhouse and ../shared/peers). Phases, any subset, in order:
#   build   CUDA build for sm_90 into build/cuda (kept between calls while the machine is warm)
#   test    GPU tests (pytest -m gpu) + a generation + system_info
#   models  random-weight W1 (Flux-dev) and W2 (SDXL) checkpoints on local disk; models_f16 W1's DiT in f16
#   run     RUN_WORKLOAD=w1_f16|w1_q8_0|... RUN_MODES=a,b
#   w1 w2   the streaming benchmark;  peer  diffusers group offload on the same shape;  h2d
#   server  pysdcpp-server vs the Python API, W1 streamed at 8 GiB, 20 images each (bench/server_gpu.py)
#   profile per-kernel GPU time of a W1 step (bench/profile.py): resident, or PROFILE_CTX='{...}' PROFILE_NAME=x
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
MODELS=${MODELS:-/tmp/pysdcpp-models}
export PYTHONUNBUFFERED=1 PYSDCPP_TEST_CACHE=/tmp/pysdcpp-test-cache
export PYSDCPP_SDCPP_SOURCE=$PWD/.wheelhouse/stable_diffusion_cpp_python-0.4.7.tar.gz
python3 -m pip install -q --no-index --root-user-action=ignore --find-links .wheelhouse cffi pycparser >/dev/null 2>&1
for phase in "$@"; do
  echo "=== $phase $(date +%T)"
  case $phase in
    build)
      start=$(date +%s)
      CMAKE_ARGS="-DSD_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90" python3 -m pip install --no-build-isolation \
        --no-index --root-user-action=ignore -Cbuild-dir=build/cuda -v . > "$OUT/build.log" 2>&1
      rc=$?; echo "build rc=$rc seconds=$(( $(date +%s) - start ))" | tee -a "$OUT/build.log"
      tail -5 "$OUT/build.log" ;;
    test)
      (cd /tmp && python3 -c "import pysdcpp, json; print(json.dumps(pysdcpp.build_info())); print(pysdcpp.system_info())") 2>&1 | tee "$OUT/info.txt"
      lib=$(python3 -P -c "import pysdcpp, pathlib; print(pathlib.Path(pysdcpp.__file__).parent / 'lib')")
      for so in "$lib"/*.so; do echo "$(basename $so): $(nm -D --defined-only "$so" | grep -c ' std::\|_ZNS\|_ZNKS\|_ZSt') exported std symbols"; done | tee -a "$OUT/info.txt"
      # -n 1: one worker process, replaced if a test crashes it, so one crash cannot hide the rest
      PYSDCPP_GPU_RESULTS=$OUT/gpu_results.json python3 -P -m pytest -p no:cacheprovider -n 1 --max-worker-restart=20 \
        -m gpu -v -rA tests/test_gpu_stream.py 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "PASSED|FAILED|ERROR|crash|passed|failed|^E " | head -60 ;;
    models)
      python3 bench/stream.py prepare --models "$MODELS" --workers 16 2>&1 | tail -5 ;;
    w1) mkdir -p /tmp/bench-images
        BENCH_IMAGE_DIR=/tmp/bench-images python3 bench/stream.py run --models "$MODELS" --workload w1 --out "$OUT/stream_w1.json" ${W1_MODES:+--modes $W1_MODES}
        python3 bench/stream.py compare --dir /tmp/bench-images --against w1_resident | tee "$OUT/compare_w1.json" ;;
    models_f16)  # W1's DiT in f16, in RAM (the local disk holds W1 and W2 only)
      mkdir -p /dev/shm/models && ln -sfn /dev/shm/models/flux-f16 "$MODELS/flux-f16"
      python3 bench/stream.py prepare --models /dev/shm/models --workers 16 --workloads w1_f16 2>&1 | tail -2 ;;
    run)  # RUN_WORKLOAD=w1_f16 RUN_MODES=resident,...
      python3 bench/stream.py run --models "$MODELS" --workload "$RUN_WORKLOAD" --out "$OUT/stream_$RUN_WORKLOAD.json" \
        ${RUN_MODES:+--modes $RUN_MODES} ;;
    w2) python3 bench/stream.py run --models "$MODELS" --workload w2 --out "$OUT/stream_w2.json" ${W2_MODES:+--modes $W2_MODES} ;;
    h2d) python3 bench/stream.py h2d | tee "$OUT/h2d.json" ;;
    server)  # FastAPI and uvicorn come from the wheelhouse; W1 is written unless `models` did
      python3 -m pip install -q --no-index --root-user-action=ignore --find-links .wheelhouse fastapi uvicorn >/dev/null 2>&1
      [ -f "$MODELS/flux/flux1-dev.safetensors" ] || python3 bench/stream.py prepare --models "$MODELS" --workers 16 --workloads w1 2>&1 | tail -1
      timeout 900 python3 bench/server_gpu.py --models "$MODELS" --out "$OUT/server_gpu.json" 2>&1 | tail -4 ;;
    profile)
      timeout 200 python3 bench/profile.py --models "$MODELS" --workload w1 --out "$OUT/profile_${PROFILE_NAME:-w1}.json" \
        ${PROFILE_CTX:+--ctx "$PROFILE_CTX"} | tail -40 ;;
    peer)
      python3 -m pip install -q --no-index --no-deps --root-user-action=ignore .wheelhouse/diffusers-*.whl .wheelhouse/importlib_metadata-*.whl
      for mode in ${PEER_MODES:-resident grp_stream}; do  # 5 timed steps each
        timeout $([ $mode = resident ] && echo 70 || echo 100) python3 .wheelhouse/diffusers_flux_offload.py $mode 5 2>&1 | grep '^{'
      done ;;
  esac
done
