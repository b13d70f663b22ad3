// What the fuzz harnesses share. The parsers under test read files, not bytes, so each input is
// written to a scratch folder of the process's own first.
//
// A harness's contract: an error Status is the right answer to most inputs and never a finding;
// only crashes, sanitizer reports, hangs and out-of-memory are.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "weir/stream_kernel.h"

namespace weir::fuzz {

// Inputs past this size are skipped: real graphs, headers and vocabularies of interest to a
// parser's corner cases are far smaller, and big inputs only slow the search down.
constexpr size_t kMaxInputBytes = 64 << 10;

// Quiets logging (a parse error is expected, not news) and makes the scratch folder. Call from
// LLVMFuzzerInitialize.
void Init();

// This process's folder under $TMPDIR (default /dev/shm, else /tmp); removed at exit.
const std::filesystem::path& ScratchDir();

// Writes `data` to ScratchDir()/name, replacing what was there, and returns the path.
std::filesystem::path WriteScratchFile(const std::string& name, const uint8_t* data, size_t size);

// Loads weir's default plugins (the build's plugin folder) into the global registry once; exits
// when they do not load, since that is a broken build and not a finding.
void LoadDefaultPlugins();

// A stream source as a run would create it: `node_text` is one node of a graph file, e.g.
// `node { name: "r" op: "io.JsonlSource" attr: "path=in.jsonl" }`, resolved once against the
// default plugins (so attrs are typed and defaults filled); Open() creates a fresh kernel whose
// relative paths name files in ScratchDir().
class Source {
 public:
  explicit Source(const std::string& node_text);
  // The kernel, or the error its factory returned.
  StatusOr<std::unique_ptr<StreamKernel>> Open() const;
  // Opens the source and lets it produce up to `max_items` items, then finishes it. Returns the
  // first error.
  Status Drain(int max_items) const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

// Loads a graph file and validates it as `weir check` does (parse, imports, params, expansion,
// attr typing against the schemas, edges, order), then renders the resolved graph. Errors are
// dropped: the harness only looks for crashes.
void CheckGraph(const std::filesystem::path& file);

}  // namespace weir::fuzz
