#!/usr/bin/env bash
# docs/ops.md is what `weir ops --markdown` prints for the default plugins; regenerate it with
#   env -u WEIR_PLUGIN_PATH build/bin/weir ops --markdown > docs/ops.md
# It lists each op's kernels as a CUDA build has them; a build without CUDA (no nvcc) compares
# without the cuda entries.
set -euo pipefail
weir=$1 source=$2 cuda=${3:-ON}
expected() {
  if [ "$cuda" = ON ]; then cat "$source/docs/ops.md"; else sed -E 's/, cuda(\([^)]*\))?//' "$source/docs/ops.md"; fi
}
if ! diff -u <(expected) <(env -u WEIR_PLUGIN_PATH "$weir" ops --markdown); then
  echo "docs/ops.md is out of date; regenerate it with:" >&2
  echo "  env -u WEIR_PLUGIN_PATH build/bin/weir ops --markdown > docs/ops.md" >&2
  exit 1
fi
