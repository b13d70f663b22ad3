#!/usr/bin/env bash
# weir's tokenizer against a real peer: the npm package tiktoken encodes a multilingual text with
# cl100k_base; weir loads the same BPE ranks (exported by the peer as a tiktoken rank file) and
# must produce identical ids. Exits 77 (ctest: skipped) with the reason when Node.js, npm or the
# package cannot be had (no network on a CI machine).
#   tiktoken_compat.sh WEIR SOURCE_DIR
set -euo pipefail
weir=$1 source=$2
skip() { echo "SKIP: $*"; exit 77; }
command -v node > /dev/null || skip "node is not installed (Debian: nodejs)"
command -v npm > /dev/null || skip "npm is not installed (Debian: npm)"
cache=${WEIR_NPM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weir/tiktoken}
if [ ! -d "$cache/node_modules/tiktoken" ]; then
  mkdir -p "$cache"
  (cd "$cache" && timeout 300 npm install --silent --no-audit --no-fund tiktoken@1 > /dev/null 2>&1) ||
    skip "cannot install the tiktoken npm package (is the npm registry reachable?)"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$source/tests/integration/tiktoken_sample.jsonl" "$work/sample.jsonl"
node "$source/tests/integration/tiktoken_peer.js" "$cache/node_modules" "$work/sample.jsonl" \
  "$work/cl100k_base.tiktoken" "$work/expected.jsonl"
cat > "$work/encode.pbtxt" <<'GRAPH'
resource { name: "tok" kind: "tokenizer" attr: "file=cl100k_base.tiktoken pattern=cl100k" }
node { name: "read" op: "io.JsonlSource" attr: "path=sample.jsonl" }
node { name: "encode" op: "tokenizer.Encode" input: "read" attr: "tokenizer=tok specials=false" }
node { name: "write" op: "io.JsonlSink" input: "encode" attr: "path=ids.jsonl columns=[ids]" }
GRAPH
"$weir" run "$work/encode.pbtxt" --out "$work/out" --progress none > "$work/run.log" 2>&1 ||
  { cat "$work/run.log"; exit 1; }
sed 's/^{"ids":\(.*\)}$/\1/' "$work/out/ids.jsonl" | tr -d ' ' > "$work/got.jsonl"
tr -d ' ' < "$work/expected.jsonl" > "$work/want.jsonl"
if ! diff -u "$work/want.jsonl" "$work/got.jsonl"; then
  echo "FAIL: weir's ids differ from tiktoken's (want, got above)" >&2
  exit 1
fi
echo "tiktoken: identical ids on $(wc -l < "$work/want.jsonl") lines, $(tr ',' '\n' < "$work/want.jsonl" | wc -l) tokens"
