#!/usr/bin/env bash
# Prepare what a device machine needs for the GPU suite, here (with pip's network): the pinned
# packages its image lacks (it ships transformers 5.x; `adapters` needs 4.57.6) as wheels in .whl/,
# the offline MiniLM's tokenizer files (BERT uncased WordPiece) and the epoch-level dataset in .gpu/.
# Both folders are git-ignored and travel with `carry`. Then, one model group per call:
#   bash benchmarks/gpu.sh "all-MiniLM all-mpnet bert-base"   (then "roberta t5", then "deberta")
set -euo pipefail
DATA=${1:-../shared/datasets}
rm -rf .whl .gpu && mkdir -p .whl .gpu/tokenizer .gpu/datasets/text_classification
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  transformers==4.57.6 adapters==1.3.0 tokenizers==0.22.2 huggingface-hub==0.36.2
MODEL=$(.venv/bin/python -c "from recycling.encoders import resolve_model; print(resolve_model('offline:all-MiniLM-L6-v2'))")
cp "$MODEL"/{tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt} .gpu/tokenizer/
cp -r "$DATA/text_classification/sciie-relation-extraction" .gpu/datasets/text_classification/
du -sh .whl .gpu
