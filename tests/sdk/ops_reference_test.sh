#!/usr/bin/env bash
# docs/ops.md is what `weir ops --markdown` prints for the default plugins; regenerate it with
#   env -u WEIR_PLUGIN_PATH build/bin/weir ops --markdown > docs/ops.md
set -euo pipefail
weir=$1 source=$2
if ! diff -u "$source/docs/ops.md" <(env -u WEIR_PLUGIN_PATH "$weir" ops --markdown); then
  echo "docs/ops.md is out of date; regenerate it with:" >&2
  echo "  env -u WEIR_PLUGIN_PATH build/bin/weir ops --markdown > docs/ops.md" >&2
  exit 1
fi
