// Graph loading: params and overrides, imports, function expansion with repeat, defaults in the
// resolved graph, binary files.
#include <gtest/gtest.h>

#include <fstream>

#include "test_util.h"

namespace weir::testing {
namespace {

const Node& FindNode(const Graph& g, const std::string& name) {
  int i = g.FindNode(name);
  CHECK_GE(i, 0) << "no node " << name;
  return g.nodes[i];
}

std::string Attr(const Node& n, const std::string& key) {
  const AttrValue* v = n.FindAttr(key);
  return v ? FormatAttrValue(*v) : "<none>";
}

std::string InputOf(const Graph& g, const Node& n, size_t i) {
  return g.nodes[n.inputs.at(i).node].name;
}

TEST(Params, ReferencesResolveWithTheirTypes) {
  auto g = LoadTestGraph(TestGraph("good/params.pbtxt"));
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  const Node& src = FindNode(*g, "src");
  EXPECT_EQ(Attr(src, "n"), "3");
  EXPECT_EQ(Attr(src, "rows"), "2");
  const Node& k = FindNode(*g, "k");
  EXPECT_EQ(Attr(k, "k"), "2");
  EXPECT_EQ(Attr(k, "ratio"), "0.25");
  EXPECT_EQ(Attr(k, "mode"), "slow");
  EXPECT_EQ(Attr(k, "tags"), "[a, b]");
  // References inside lists.
  EXPECT_EQ(Attr(k, "sizes"), "[2, 7, 3]");
  // Defaults are filled in.
  EXPECT_EQ(Attr(k, "dtype"), "f32");
  EXPECT_EQ(Attr(k, "shape"), "[2, -1]");
  EXPECT_EQ(Attr(src, "sleep_ms"), "0");
  EXPECT_EQ(FormatAttrValue(g->FindParam("label")->value), "'two words'");
  EXPECT_TRUE(g->FindParam("flag")->value.b());
}

TEST(Params, OverridesAreTypedLikeTheParam) {
  auto g = LoadTestGraph(TestGraph("good/params.pbtxt"), {"batches=7", "ratio=1", "mode=fast"});
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(Attr(FindNode(*g, "src"), "n"), "7");
  EXPECT_EQ(Attr(FindNode(*g, "k"), "sizes"), "[2, 7, 7]");
  // An int written for a float param widens.
  EXPECT_EQ(Attr(FindNode(*g, "k"), "ratio"), "1.0");
  EXPECT_EQ(Attr(FindNode(*g, "k"), "mode"), "fast");
  EXPECT_TRUE(g->FindParam("batches")->overridden);
}

TEST(Params, BadOverridesAreRefused) {
  auto wrong_type = LoadTestGraph(TestGraph("good/params.pbtxt"), {"batches=2.5"});
  ASSERT_FALSE(wrong_type.ok());
  EXPECT_EQ(wrong_type.status().ToString(),
            "--set batches=2.5: param 'batches' expects int, got 2.5");

  auto unknown = LoadTestGraph(TestGraph("good/params.pbtxt"), {"batchez=2"});
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("has no param 'batchez'; did you mean 'batches'?"),
            std::string::npos)
      << unknown.status().ToString();

  auto not_allowed = LoadTestGraph(TestGraph("good/params.pbtxt"), {"mode=medium"});
  ASSERT_FALSE(not_allowed.ok());
  EXPECT_EQ(StripGraphDir(not_allowed.status().ToString()),
            "good/params.pbtxt:5:41: node 'k' (op 'test.Knobs'): attr 'mode' expects one of "
            "{fast, slow}, got medium");

  auto malformed = LoadTestGraph(TestGraph("good/params.pbtxt"), {"batches"});
  ASSERT_FALSE(malformed.ok());
  EXPECT_EQ(malformed.status().ToString(), "--set batches: expected key=value");
}

TEST(Functions, RepeatStampsCopiesInSequenceWithTheirIndex) {
  auto g = LoadTestGraph(TestGraph("good/functions.pbtxt"));
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  std::vector<std::string> names;
  for (const Node& n : g->nodes) names.push_back(n.name);
  EXPECT_EQ(names,
            (std::vector<std::string>{"src", "stages.0.first", "stages.0.second", "stages.1.first",
                                      "stages.1.second", "stages.2.first", "stages.2.second",
                                      "once.fail", "twice.a.fail", "twice.b.fail", "sink"}));
  for (int k = 0; k < 3; ++k) {
    const Node& second = FindNode(*g, "stages." + std::to_string(k) + ".second");
    EXPECT_EQ(Attr(second, "at"), std::to_string(k));
    EXPECT_EQ(InputOf(*g, second, 0), "stages." + std::to_string(k) + ".first");
  }
  EXPECT_EQ(InputOf(*g, FindNode(*g, "stages.0.first"), 0), "src");
  EXPECT_EQ(InputOf(*g, FindNode(*g, "stages.1.first"), 0), "stages.0.second");
  EXPECT_EQ(InputOf(*g, FindNode(*g, "stages.2.first"), 0), "stages.1.second");
  // A call's output feeds the next node; an imported param sets a call attr.
  EXPECT_EQ(InputOf(*g, FindNode(*g, "once.fail"), 0), "stages.2.second");
  EXPECT_EQ(Attr(FindNode(*g, "once.fail"), "at"), "3");
  // Nested calls: the inner call's attr, then the function default.
  EXPECT_EQ(Attr(FindNode(*g, "twice.a.fail"), "at"), "100");
  EXPECT_EQ(Attr(FindNode(*g, "twice.b.fail"), "at"), "7");
  EXPECT_EQ(InputOf(*g, FindNode(*g, "twice.b.fail"), 0), "twice.a.fail");
  EXPECT_EQ(InputOf(*g, FindNode(*g, "sink"), 0), "twice.b.fail");
  // Diamond import: blocks.pbtxt is imported twice but defines its functions once.
  EXPECT_EQ(g->functions.size(), 3u);
}

TEST(Resolved, WritesEveryAttrAndReloadsToTheSameGraph) {
  auto g = LoadTestGraph(TestGraph("good/functions.pbtxt"));
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  GraphDef def = ToResolvedGraphDef(*g);
  EXPECT_EQ(def.import_size(), 0);
  EXPECT_EQ(def.function_size(), 3);
  ASSERT_EQ(def.node_size(), 11);
  const NodeDef& src = def.node(0);
  EXPECT_EQ(src.name(), "src");
  EXPECT_EQ(std::vector<std::string>(src.attr().begin(), src.attr().end()),
            (std::vector<std::string>{"n=10", "rows=1", "sleep_ms=0"}));

  std::string path = ::testing::TempDir() + "/resolved.pbtxt";
  std::ofstream(path) << GraphDefToText(def);
  auto again = LoadTestGraph(path);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(GraphDefToText(ToResolvedGraphDef(*again)), GraphDefToText(def));
}

TEST(Binary, ABinaryGraphLoadsLikeItsText) {
  auto text = LoadGraph(TestGraph("good/params.pbtxt"));
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  GraphDef def;
  def.set_name("params");
  for (const Param& p : text->params) def.add_param(p.name + "=" + FormatAttrValue(p.value));
  NodeDef* src = def.add_node();
  src->set_name("src");
  src->set_op("test.Count");
  src->add_attr("n=$batches");
  std::string path = ::testing::TempDir() + "/graph.pb";
  std::ofstream(path, std::ios::binary) << def.SerializeAsString();
  auto g = LoadTestGraph(path, {"batches=5"});
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(Attr(FindNode(*g, "src"), "n"), "5");

  // Errors in binary files name the file and node, without a line.
  src->add_attr("bogus=1");
  std::ofstream(path, std::ios::binary | std::ios::trunc) << def.SerializeAsString();
  auto bad = LoadTestGraph(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().ToString(),
            path +
                ": node 'src' (op 'test.Count'): unknown attr 'bogus' (op 'test.Count' takes: "
                "n, rows, sleep_ms)");
}

TEST(Resources, AttrsAreTypedAgainstTheKind) {
  auto g = LoadTestGraph(TestGraph("good/resources.pbtxt"), {"cap=32"});
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  ASSERT_EQ(g->resources.size(), 1u);
  ASSERT_EQ(g->resources[0].resolved_attrs.size(), 1u);
  EXPECT_EQ(FormatAttrValue(g->resources[0].resolved_attrs[0].second), "32");
  EXPECT_EQ(Attr(FindNode(*g, "use"), "store"), "store");
}

TEST(Errors, AllProblemsAreReportedInFileOrder) {
  std::string path = ::testing::TempDir() + "/many.pbtxt";
  std::ofstream(path) << "node { name: \"a\" op: \"test.Count\" attr: \"n=x\" }\n"
                      << "node { name: \"b\" op: \"test.Nope\" }\n"
                      << "node { name: \"c\" op: \"test.Record\" input: \"zz\" }\n";
  auto g = LoadTestGraph(path);
  ASSERT_FALSE(g.ok());
  std::string text = g.status().ToString();
  EXPECT_EQ(text, path + ":1:44: node 'a' (op 'test.Count'): attr 'n' expects int, got 'x'\n" +
                      path + ":2:23: node 'b' (op 'test.Nope'): unknown op 'test.Nope'\n" + path +
                      ":3:44: node 'c' (op 'test.Record'): input 'zz': no node named 'zz'");
}

}  // namespace
}  // namespace weir::testing

namespace weir::testing {
namespace {

TEST(Functions, RepeatCountFromAParam) {
  for (int layers : {1, 4, 7}) {
    auto g =
        LoadTestGraph(TestGraph("good/repeat_param.pbtxt"), {"layers=" + std::to_string(layers)});
    ASSERT_TRUE(g.ok()) << g.status().ToString();
    // src, two nodes per copy, sink.
    EXPECT_EQ(g->nodes.size(), 2u + 2u * layers);
    std::string last = "stages." + std::to_string(layers - 1) + ".second";
    ASSERT_GE(g->FindNode(last), 0);
    EXPECT_EQ(g->nodes[g->nodes[g->FindNode("sink")].inputs[0].node].name, last);
  }
  // repeat=0: no copies, the call passes its inputs through.
  auto none = LoadTestGraph(TestGraph("good/repeat_param.pbtxt"), {"layers=0"});
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  EXPECT_EQ(none->nodes.size(), 2u);
  EXPECT_EQ(none->nodes[none->nodes[none->FindNode("sink")].inputs[0].node].name, "src");
}

TEST(Params, ExpressionsComputeAttrValues) {
  auto g = LoadTestGraph(TestGraph("good/expressions.pbtxt"));
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(Attr(FindNode(*g, "src"), "n"), "96");
  EXPECT_EQ(Attr(FindNode(*g, "src"), "rows"), "2");
  const Node& k = FindNode(*g, "k");
  EXPECT_EQ(Attr(k, "k"), "2");
  EXPECT_EQ(Attr(k, "ratio"), "0.75");
  EXPECT_EQ(Attr(k, "sizes"), "[4, 6, 1]");
  auto overridden = LoadTestGraph(TestGraph("good/expressions.pbtxt"), {"heads=8"});
  ASSERT_TRUE(overridden.ok()) << overridden.status().ToString();
  EXPECT_EQ(Attr(FindNode(*overridden, "src"), "n"), "192");
  // An inexact division is a float, which an int attr refuses; unknown names are named.
  auto inexact = LoadTestGraph(TestGraph("good/expressions.pbtxt"), {"heads=3"});
  ASSERT_FALSE(inexact.ok());
  EXPECT_NE(
      inexact.status().ToString().find(
          "expressions.pbtxt:6:17: node 'k' (op 'test.Knobs'): attr 'k' expects int, got 1.5"),
      std::string::npos)
      << inexact.status().ToString();
}

TEST(Params, BadExpressionsAreNamed) {
  for (auto [text, error] : std::vector<std::pair<std::string, std::string>>{
           {"n=$(heads * nops)", "unknown param 'nops'; did you mean 'nope'?"},
           {"n=$(heads * (nope + 1)", "missing ')'"},
           {"n=$(heads / 0)", "division by zero"},
           {"n=$(heads +)", "unexpected ')'"},
           {"n=$(sqrt(0 - heads))", "sqrt of -4"},
           {"n=$(log(heads))", "unknown function 'log' (there are sqrt and ln)"},
           // Found by fuzzing (tests/fuzz): overflow was undefined behaviour, deep nesting ran off
           // the end of the stack.
           {"n=$(heads * 9223372036854775807)", "integer overflow"},
           {"n=$(0 - 9223372036854775807 - heads)", "integer overflow"},
           {"n=$((0 - 9223372036854775807 - 1) / (0 - 1))", "integer overflow"},
           {"n=$(-(0 - 9223372036854775807 - 1))", "integer overflow"},
           {"n=$" + std::string(300, '(') + "heads" + std::string(300, ')'),
            "nested more than 200 deep"}}) {
    std::string graph =
        "param: \"heads=4 nope=2\"\nnode { name: \"src\" op: \"test.Count\" attr: \"" + text +
        "\" }\n";
    std::string path = ::testing::TempDir() + "/bad_expression.pbtxt";
    std::ofstream(path) << graph;
    auto g = LoadTestGraph(path);
    ASSERT_FALSE(g.ok()) << text;
    EXPECT_NE(g.status().ToString().find(error), std::string::npos) << g.status().ToString();
    EXPECT_NE(g.status().ToString().find("bad_expression.pbtxt:2:"), std::string::npos)
        << g.status().ToString();
  }
}

// Hostile files the fuzzers (tests/fuzz) produce: each is a clean error, never a crash, a hang or
// a giant allocation.
TEST(Errors, HostileGraphsFailCleanly) {
  std::string long_name(100000, 'a');
  std::string digits(100000, '1');
  for (auto [graph, error] : std::vector<std::pair<std::string, std::string>>{
           // Long names, ports, devices, numbers and unknown fields overflowed std::regex's stack.
           {"node { name: \"" + long_name + "!\" op: \"test.Count\" }",
            "node name must start with a letter"},
           {"node { name: \"r\" op: \"test.Record\" input: \"" + long_name + ":" + long_name +
                "!\" }",
            "is not of the form 'node', 'node:port' or '^node'"},
           {"node { name: \"src\" op: \"test.Count\" device: \"cpu:" + digits + "x\" }",
            "is not 'cpu', 'cpu:N', 'cuda' or 'cuda:N'"},
           {"node { name: \"src\" op: \"test.Count\" attr: \"n=" + digits + "\" }",
            "int out of range"},
           {long_name + ": 1", "has no field named"},
           // Nested lists recursed without bound.
           {"node { name: \"src\" op: \"test.Count\" attr: \"n=" + std::string(100000, '[') +
                "\" }",
            "lists nest more than 64 deep"},
           // Reading /dev/zero never ends.
           {"import: \"/dev/zero\"", "import '/dev/zero' is not a file"},
           // A function repeating itself twice per call is 2^32 failing copies 32 calls deep:
           // expansion stops once a hundred errors are in.
           {"function { name: \"F\" input: \"x\" output: \"y=f\"\n"
            "  node { name: \"f\" op: \"F\" input: \"x\" repeat: 2 } }\n"
            "node { name: \"src\" op: \"test.Count\" }\n"
            "node { name: \"call\" op: \"F\" input: \"src\" }",
            "function calls nest deeper than 32 (does function 'F' call itself?)"},
           // Nested repeats within each limit multiply past it.
           {"function { name: \"G\" input: \"x\" output: \"y=j\"\n"
            "  node { name: \"j\" op: \"test.Jitter\" input: \"x\" } }\n"
            "function { name: \"F\" input: \"x\" output: \"y=g\"\n"
            "  node { name: \"g\" op: \"G\" input: \"x\" repeat: 1000 } }\n"
            "node { name: \"src\" op: \"test.Count\" }\n"
            "node { name: \"call\" op: \"F\" input: \"src\" repeat: 1000 }",
            "expand to more than 100000 copies (nested repeats multiply)"}}) {
    std::string path = ::testing::TempDir() + "/hostile.pbtxt";
    std::ofstream(path) << graph << "\n";
    auto g = LoadTestGraph(path);
    ASSERT_FALSE(g.ok()) << error;
    EXPECT_NE(g.status().ToString().find(error), std::string::npos)
        << g.status().ToString().substr(0, 1000);
  }
}

// inline=true: the called function's nodes keep the caller's names (a wrapper shares the
// parameter names of the model it wraps); names it would duplicate are errors.
TEST(Functions, InlineCallsKeepTheCallersNames) {
  std::string path = ::testing::TempDir() + "/inline.pbtxt";
  auto write = [&](const std::string& extra) {
    std::ofstream(path) << "import: \"" << WEIR_SOURCE_DIR
                        << "/tests/graphs/good/lib/blocks.pbtxt\"\n"
                           "function { name: \"Wrap\" input: \"x\" output: \"y=after:out\"\n"
                           "  node { name: \"inner\" op: \"Stage\" input: \"x\" attr: "
                           "\"inline=true\" }\n"
                           "  node { name: \"after\" op: \"test.Jitter\" input: \"inner\" } }\n"
                           "node { name: \"src\" op: \"test.Count\" }\n"
                           "node { name: \"w\" op: \"Wrap\" input: \"src\" }\n"
                        << extra << "node { name: \"sink\" op: \"test.Record\" input: \"w\" }\n";
  };
  write("");
  auto g = LoadTestGraph(path);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  // Stage's nodes are named under the call of Wrap, not under "inner".
  EXPECT_EQ(FindNode(*g, "w.first").op, "test.Jitter");
  EXPECT_EQ(FindNode(*g, "w.second").op, "test.Fail");
  EXPECT_LT(g->FindNode("w.inner.first"), 0);
  EXPECT_EQ(g->nodes[FindNode(*g, "w.after").inputs[0].node].name, "w.second");
  // At the top level an inlined function's nodes take bare names, which may clash.
  write(
      "node { name: \"top\" op: \"Stage\" input: \"src\" attr: \"inline=true\" }\n"
      "node { name: \"first\" op: \"test.Jitter\" input: \"src\" }\n");
  auto clash = LoadTestGraph(path);
  ASSERT_FALSE(clash.ok());
  EXPECT_NE(clash.status().ToString().find("duplicate node name 'first'"), std::string::npos)
      << clash.status().ToString();
  write("node { name: \"top\" op: \"Stage\" input: \"src\" attr: \"inline=true repeat=2\" }\n");
  auto repeated = LoadTestGraph(path);
  ASSERT_FALSE(repeated.ok());
  EXPECT_NE(repeated.status().ToString().find("inline=true and repeat cannot be combined"),
            std::string::npos)
      << repeated.status().ToString();
}

// `${name}` in a quoted string is the param's value; `in_flight` belongs to sources.
TEST(Params, QuotedStringsInterpolateBracedParams) {
  std::string path = ::testing::TempDir() + "/interpolate.pbtxt";
  auto load = [&](const std::string& body) {
    std::ofstream(path) << "param: \"beta=0.04 name=run\"\n" << body;
    return LoadTestGraph(path);
  };
  auto g = load(
      "node { name: \"src\" op: \"test.Count\" }\n"
      "node { name: \"k\" op: \"test.Knobs\" input: \"src\" "
      "attr: \"k=1 tags=['beta=${beta} at ${name}/x', 'costs $5']\" }\n");
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(Attr(FindNode(*g, "k"), "tags"), "['beta=0.04 at run/x', 'costs $5']");
  auto unknown = load(
      "node { name: \"src\" op: \"test.Count\" }\n"
      "node { name: \"k\" op: \"test.Knobs\" input: \"src\" attr: \"k=1 tags=['${bta}']\" }\n");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().ToString().find("unknown param '${bta}'; did you mean 'beta'?"),
            std::string::npos)
      << unknown.status().ToString();
  auto fed = load(
      "node { name: \"src\" op: \"test.Count\" }\n"
      "node { name: \"sink\" op: \"test.Record\" input: \"src\" in_flight: 1 }\n");
  ASSERT_FALSE(fed.ok());
  EXPECT_NE(fed.status().ToString().find("in_flight bounds a source's items"), std::string::npos)
      << fed.status().ToString();
}

TEST(Functions, TheOpOfANodeCanBeAParam) {
  auto g = LoadTestGraph(TestGraph("good/op_param.pbtxt"));
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(FindNode(*g, "plain.body").op, "test.Jitter");
  EXPECT_EQ(FindNode(*g, "nested.body.second").op, "test.Fail");
  auto bad = LoadTestGraph(TestGraph("good/op_param.pbtxt"), {"inner=Stag"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().ToString().find("unknown op 'Stag'; did you mean 'Stage'?"),
            std::string::npos)
      << bad.status().ToString();
}

// Files too large to be graphs and imports chained too deep are refused before they are read.
TEST(Errors, OversizedGraphsAndDeepImportChainsAreRefused) {
  namespace fs = std::filesystem;
  fs::path dir = fs::path(::testing::TempDir()) / "hostile_files";
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::path big = dir / "big.pbtxt";
  std::ofstream(big) << "# sparse\n";
  fs::resize_file(big, (64 << 20) + 1);  // sparse: no disk is used
  auto g = LoadTestGraph(big.string());
  ASSERT_FALSE(g.ok());
  EXPECT_NE(g.status().ToString().find("is 67108865 bytes; a graph file is at most 67108864 bytes"),
            std::string::npos)
      << g.status().ToString();
  // link0 imports link1, ... link69: past the 64 levels a graph may nest.
  for (int i = 0; i < 70; ++i) {
    std::ofstream(dir / ("link" + std::to_string(i) + ".pbtxt"))
        << "import: \"link" << i + 1 << ".pbtxt\"\n";
  }
  std::ofstream(dir / "link70.pbtxt") << "node { name: \"src\" op: \"test.Count\" }\n";
  g = LoadTestGraph((dir / "link0.pbtxt").string());
  ASSERT_FALSE(g.ok());
  EXPECT_NE(g.status().ToString().find("link63.pbtxt:1:10: imports nest deeper than 64 files"),
            std::string::npos)
      << g.status().ToString();
}

}  // namespace
}  // namespace weir::testing
