#!/usr/bin/env bash
# The SDK as a third party meets it: install weir from this build into a fresh prefix, scaffold
# a plugin with the installed weir-new-plugin, build it out of tree against the installed package
# only, run its tests, and run its example graph with the installed weir via WEIR_PLUGIN_PATH.
#   sdk_test.sh BUILD_DIR
set -euo pipefail
build=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"
fail() { echo "FAIL: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$prefix" > "$work/install.log" || { cat "$work/install.log"; fail "install"; }
for f in bin/weir bin/weir-new-plugin lib/cmake/weir/weirConfig.cmake include/weir/plugin.h \
  include/weir/graph.pb.h include/weir/testing/op_check.h lib/weir/plugins/weir_nn.so; do
  [ -e "$prefix/$f" ] || fail "the install lacks $f"
done

# The scaffold refuses bad names and existing folders.
if "$prefix/bin/weir-new-plugin" Bad-Name --dir "$work" 2> "$work/err"; then fail "accepted Bad-Name"; fi
grep -q "must be lower case" "$work/err" || fail "unclear error for a bad name: $(cat "$work/err")"
"$prefix/bin/weir-new-plugin" acme --dir "$work" > /dev/null
if "$prefix/bin/weir-new-plugin" acme --dir "$work" 2> "$work/err"; then fail "overwrote acme"; fi

# Out of tree: nothing from weir's source or build folder is visible to this build.
plugin="$work/acme"
cmake -S "$plugin" -B "$plugin/build" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$work/configure.log" 2>&1 || { cat "$work/configure.log"; fail "configure"; }
grep -q "WEIR_PLUGIN_PATH=$plugin/build/plugins" "$work/configure.log" || fail "configure did not print WEIR_PLUGIN_PATH"
if grep -rq "$(cd "$(dirname "$0")/../.." && pwd)" "$plugin/build/CMakeCache.txt"; then
  fail "the plugin build refers to weir's source tree"
fi
cmake --build "$plugin/build" > "$work/build.log" 2>&1 || { cat "$work/build.log"; fail "build"; }
ctest --test-dir "$plugin/build" --output-on-failure > "$work/ctest.log" 2>&1 || { cat "$work/ctest.log"; fail "plugin tests"; }
grep -q "100% tests passed, 0 tests failed out of 4" "$work/ctest.log" || { cat "$work/ctest.log"; fail "expected 4 plugin tests to pass"; }
grep -q "DeviceKernelsAgreeWithTheCpu.*Skipped" "$work/ctest.log" || { cat "$work/ctest.log"; fail "the CPU-only conformance test should say it skipped"; }

# The installed CLI finds the plugin through WEIR_PLUGIN_PATH and runs its graph.
export WEIR_PLUGIN_PATH="$plugin/build/plugins"
"$prefix/bin/weir" ops acme.Square | grep -q "grad    yes" || fail "weir ops does not show acme.Square"
(cd "$plugin" && "$prefix/bin/weir" run graphs/example.pbtxt --out "$work/out" --progress none) > "$work/run.log" 2>&1 || { cat "$work/run.log"; fail "run"; }
grep -q '"text":"HELLO, WEIR"' "$work/out/upper.jsonl" || fail "unexpected output: $(cat "$work/out/upper.jsonl")"
echo "sdk: installed, scaffolded, built out of tree, tested and ran acme"
