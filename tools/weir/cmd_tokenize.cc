// weir tokenize: text on stdin to token ids, or ids to text, with a tokenizer file. It runs a
// three-node graph (JSONL in, tokenizer.Encode or .Decode, JSONL out) in a temporary folder, so
// the CLI knows no tokenizer code: the tokenizer plugin does the work, as in any graph.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "args.h"
#include "commands.h"
#include "weir/json.h"
#include "weir/runtime/executor.h"
#include "weir/runtime/prepare.h"

namespace weir::cli {

namespace {
constexpr char kHelp[] = R"(usage: weir tokenize --tokenizer FILE [--decode] [--pattern P]

Reads text on stdin and prints its token ids, space-separated, on one line; with --decode, reads
whitespace-separated ids and prints their text. FILE is a Hugging Face tokenizer.json or a
tiktoken rank file (whose pre-tokenizer is --pattern: cl100k (default), gpt2 or a regex). Special
tokens written in the text become their ids.

Options:
  --tokenizer FILE  the tokenizer
  --decode          ids to text
  --pattern P       pre-tokenizer of a tiktoken rank file
)";

namespace fs = std::filesystem;

// A temporary folder removed when it goes out of scope.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "weir-tokenize-XXXXXX").string();
    path = ::mkdtemp(pattern.data()) != nullptr ? fs::path(pattern) : fs::path();
  }
  ~TempDir() {
    std::error_code ec;
    if (!path.empty()) fs::remove_all(path, ec);
  }
};

}  // namespace

int TokenizeCommand(const std::vector<std::string>& argv) {
  Args args;
  if (auto exit = ParseCommand(
          "tokenize", argv,
          {{"tokenizer", true, false}, {"decode", false, false}, {"pattern", true, false}}, kHelp,
          0, 0, &args))
    return *exit;
  if (!args.Has("tokenizer")) {
    std::cerr << "weir tokenize: --tokenizer FILE is required\n";
    return 2;
  }
  fs::path file = fs::absolute(*args.Get("tokenizer"));
  bool decode = args.Has("decode");
  TempDir tmp;
  if (tmp.path.empty()) {
    std::cerr << "weir tokenize: cannot create a temporary folder\n";
    return 1;
  }
  std::stringstream in;
  in << std::cin.rdbuf();
  {
    std::ofstream rows(tmp.path / "in.jsonl");
    if (decode) {
      rows << "{\"ids\": \"";
      std::string id;
      bool first = true;
      while (in >> id) {
        if (id.find_first_not_of("0123456789") != std::string::npos) {
          std::cerr << "weir tokenize: '" << id << "' is not a token id\n";
          return 1;
        }
        rows << (first ? "" : " ") << id;
        first = false;
      }
      rows << "\"}\n";
    } else {
      rows << "{\"text\": " << JsonQuote(in.str()) << "}\n";
    }
  }
  std::string pattern = args.Get("pattern").value_or("cl100k");
  // Both go into a compact attr string in single quotes.
  for (const std::string& v : {file.string(), pattern}) {
    if (v.find_first_of("'\"\\") != std::string::npos) {
      std::cerr << "weir tokenize: quotes and backslashes are not supported in '" << v << "'\n";
      return 2;
    }
  }
  std::ofstream(tmp.path / "tokenize.pbtxt")
      << "resource { name: \"tok\" kind: \"tokenizer\" attr: \"file='" << file.string()
      << "' pattern='" << pattern << "'\" }\n"
      << "node { name: \"read\" op: \"io.JsonlSource\" attr: \"path=in.jsonl\" }\n"
      << (decode ? "node { name: \"apply\" op: \"tokenizer.Decode\" input: \"read\" "
                   "attr: \"tokenizer=tok\" }\n"
                 : "node { name: \"apply\" op: \"tokenizer.Encode\" input: \"read\" "
                   "attr: \"tokenizer=tok\" }\n")
      << "node { name: \"write\" op: \"io.JsonlSink\" input: \"apply\" attr: \"path=out.jsonl "
      << (decode ? "columns=[text]" : "columns=[ids]") << "\" }\n";
  auto graph = PrepareGraph(tmp.path / "tokenize.pbtxt", {});
  if (!graph.ok()) {
    std::cerr << "weir tokenize: " << graph.status().message() << "\n";
    return 1;
  }
  RunOptions options;
  options.out_dir = tmp.path / "out";
  RunResult result = RunGraph(*graph, options);
  if (!result.status.ok()) {
    std::cerr << "weir tokenize: " << result.status.message() << "\n";
    return 1;
  }
  std::ifstream out(tmp.path / "out" / "out.jsonl");
  std::string line;
  std::getline(out, line);
  auto row = ParseJsonObject(line);
  if (!row.ok()) {
    std::cerr << "weir tokenize: no output\n";
    return 1;
  }
  if (decode) {
    std::cout << row->fields().at("text").string_value();
  } else {
    const auto& ids = row->fields().at("ids").list_value().values();
    for (int i = 0; i < ids.size(); ++i)
      std::cout << (i ? " " : "") << static_cast<int64_t>(ids[i].number_value());
    std::cout << "\n";
  }
  return 0;
}

}  // namespace weir::cli
