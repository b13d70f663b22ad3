// Packed documents: nn.SegmentIds numbers them, nn.Attention with segments lets each attend as if
// it were alone (forward and backward, across the kernels' 128-query / 256-key blocks), and a
// DeepSeek-V3 model with doc_separator gives each document of a packed row its own logits.
#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "test_util.h"
#include "tiny_v3.h"
#include "weir/runtime/program.h"
#include "weir/testing/op_check.h"

namespace weir::testing {
namespace {

TensorType F64(Shape s) { return {DT_F64, std::move(s)}; }
TensorType I64(Shape s) { return {DT_I64, std::move(s)}; }

std::vector<double> Ids(const std::vector<int64_t>& v) { return {v.begin(), v.end()}; }

// ---- nn.SegmentIds

TEST(SegmentIds, CountsTheSeparatorsBeforeEachPosition) {
  // Separator 0. Row 0: "5 0 | 3 0 | 0 | 7", row 1: "0 | 1 2 3 4 0": a document owns its
  // separator, the next one starts after it.
  std::vector<int64_t> tokens = {5, 0, 3, 0, 0, 7, 0, 1, 2, 3, 4, 0};
  std::vector<double> want = Ids({0, 0, 1, 1, 2, 3, 0, 1, 1, 1, 1, 1});
  for (DataType id : {DT_I64, DT_I32}) {
    auto out = RunOp({"nn.SegmentIds", "separator=0", {{id, {2, 6}}}, {{0, Ids(tokens)}}});
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    EXPECT_EQ((*out)[0].dtype(), DT_I64);
    EXPECT_EQ((*out)[0].shape(), (Shape{2, 6}));
    EXPECT_EQ((*out)[0].ToVector(), want) << DataTypeName(id);
  }
  // No packing (the default, -1) and a separator that never occurs: one document per row.
  for (const char* attrs : {"", "separator=-1", "separator=9"}) {
    auto out = RunOp({"nn.SegmentIds", attrs, {I64({2, 6})}, {{0, Ids(tokens)}}});
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    EXPECT_EQ((*out)[0].ToVector(), std::vector<double>(12, 0.0)) << attrs;
  }
}

TEST(SegmentIds, RejectsWhatIsNotARowOfIds) {
  auto floats = RunOp({"nn.SegmentIds", "separator=1", {F64({2, 3})}});
  ASSERT_FALSE(floats.ok());
  EXPECT_NE(floats.status().message().find("integer ids [batch, time]"), std::string::npos)
      << floats.status().ToString();
  EXPECT_FALSE(RunOp({"nn.SegmentIds", "separator=1", {I64({6})}}).ok());
  EXPECT_FALSE(RunOp({"nn.SegmentIds", "separator=-2", {I64({1, 2})}}).ok());
}

// ---- nn.Attention with segments

struct Grads {
  Tensor o, lse, dq, dk, dv;
};

// o and lse of nn.Attention over `in` (q, k, v and maybe segments), and dq, dk, dv of
// loss = Σ o ⊙ w.
Grads Attend(const std::string& attrs, const std::vector<Tensor>& in, const Tensor& w) {
  OpCase c;
  c.op = "nn.Attention";
  c.attrs = attrs;
  std::map<int, Tensor> given;
  for (size_t i = 0; i < in.size(); ++i) {
    c.inputs.push_back({in[i].dtype(), in[i].shape()});
    given[static_cast<int>(i)] = in[i];
  }
  Grads r;
  auto forward = RunOp(c, given);
  EXPECT_TRUE(forward.ok()) << forward.status().ToString();
  if (!forward.ok()) return r;
  r.o = (*forward)[0];
  r.lse = (*forward)[1];
  auto graph = OpGraph(c, /*with_loss=*/true);
  EXPECT_TRUE(graph.ok()) << graph.status().ToString();
  if (!graph.ok()) return r;
  ProgramOptions options;
  options.loss = "loss";
  options.input_grads = {"x0", "x1", "x2"};
  std::vector<TensorType> types = c.inputs;
  types.push_back({w.dtype(), w.shape()});
  auto program = Program::Build(*graph, "F", {}, types, TestRegistry(), options);
  EXPECT_TRUE(program.ok()) << program.status().ToString();
  if (!program.ok()) return r;
  std::vector<Tensor> inputs = in;
  inputs.push_back(w);
  ParamStore none;
  auto run = (*program)->Run(inputs, none);
  EXPECT_TRUE(run.ok()) << run.status().ToString();
  if (!run.ok()) return r;
  r.dq = run->input_grads[0];
  r.dk = run->input_grads[1];
  r.dv = run->input_grads[2];
  return r;
}

Tensor Random(DataType dtype, const Shape& shape, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(-1, 1);
  std::vector<double> v(static_cast<size_t>(NumElements(shape)));
  for (double& x : v) x = u(rng);
  return Tensor::FromValues(dtype, shape, v);
}

// Positions [begin, end) of row b along `axis` (1 for [batch, time, ...], 2 for lse).
std::vector<double> Part(const Tensor& t, int64_t b, int axis, int64_t begin, int64_t end) {
  return t.Slice(0, b, b + 1).Slice(axis, begin, end).Contiguous().ToVector();
}

void ExpectNear(const std::vector<double>& got, const std::vector<double>& want, double tolerance,
                const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], tolerance) << what << i;
}

struct Packing {
  int64_t heads, kv_heads, d, dv;
  std::vector<std::vector<int64_t>> rows;  // each row's document lengths; equal sums
  std::string attrs;                       // "" (causal) or "causal=false ..."
};

// Packs random documents into rows and checks every output and input gradient of each document
// against nn.Attention over that document alone.
void ExpectEachDocumentAttendsAlone(const Packing& p, uint64_t seed) {
  int64_t batch = static_cast<int64_t>(p.rows.size());
  int64_t time = std::accumulate(p.rows[0].begin(), p.rows[0].end(), int64_t{0});
  std::vector<double> segments;
  for (const auto& docs : p.rows) {
    ASSERT_EQ(std::accumulate(docs.begin(), docs.end(), int64_t{0}), time);
    for (size_t doc = 0; doc < docs.size(); ++doc)
      segments.insert(segments.end(), static_cast<size_t>(docs[doc]), static_cast<double>(doc));
  }
  std::mt19937_64 rng(seed);
  Tensor q = Random(DT_F64, {batch, time, p.heads, p.d}, rng);
  Tensor k = Random(DT_F64, {batch, time, p.kv_heads, p.d}, rng);
  Tensor v = Random(DT_F64, {batch, time, p.kv_heads, p.dv}, rng);
  Tensor w = Random(DT_F64, {batch, time, p.heads, p.dv}, rng);
  Tensor seg = Tensor::FromValues(DT_I64, {batch, time}, segments);
  Grads packed = Attend(p.attrs, {q, k, v, seg}, w);
  ASSERT_TRUE(packed.dv.defined());
  for (int64_t b = 0; b < batch; ++b) {
    int64_t begin = 0;
    for (int64_t len : p.rows[static_cast<size_t>(b)]) {
      int64_t end = begin + len;
      auto alone_in = [&](const Tensor& t) { return t.Slice(0, b, b + 1).Slice(1, begin, end); };
      Grads alone = Attend(p.attrs, {alone_in(q), alone_in(k), alone_in(v)}, alone_in(w));
      ASSERT_TRUE(alone.dv.defined());
      std::string where = "row " + std::to_string(b) + " document [" + std::to_string(begin) +
                          ", " + std::to_string(end) + ") ";
      ExpectNear(Part(packed.o, b, 1, begin, end), alone.o.ToVector(), 1e-12, where + "o ");
      ExpectNear(Part(packed.lse, b, 2, begin, end), alone.lse.ToVector(), 1e-12, where + "lse ");
      ExpectNear(Part(packed.dq, b, 1, begin, end), alone.dq.ToVector(), 1e-12, where + "dq ");
      ExpectNear(Part(packed.dk, b, 1, begin, end), alone.dk.ToVector(), 1e-12, where + "dk ");
      ExpectNear(Part(packed.dv, b, 1, begin, end), alone.dv.ToVector(), 1e-12, where + "dv ");
      begin = end;
    }
  }
}

TEST(AttentionSegments, EachDocumentAttendsAsIfAlone) {
  // Multi-head, causal; one-token documents and a row that is one document.
  ExpectEachDocumentAttendsAlone({2, 2, 3, 3, {{5, 1, 9, 5}, {20}, {1, 1, 17, 1}}, ""}, 1);
  // Grouped-query (4 query heads on 2 kv heads), dv != d, not causal, explicit scale.
  ExpectEachDocumentAttendsAlone({4, 2, 4, 3, {{7, 6, 7}, {1, 18, 1}}, "causal=false scale=0.7"},
                                 2);
}

TEST(AttentionSegments, DocumentsAcrossTheQueryAndKeyBlocks) {
  // Query blocks of 128 and key blocks of 256: documents that straddle 128, 256 and 384, one
  // longer than a key block that starts mid-block, and a row that is one document.
  Packing causal{2, 1, 8, 4, {{100, 60, 120, 50, 10}, {40, 300}, {340}, {1, 127, 2, 210}}, ""};
  ExpectEachDocumentAttendsAlone(causal, 3);
  Packing full{4, 2, 5, 6, {{130, 200, 10}, {257, 83}}, "causal=false"};
  ExpectEachDocumentAttendsAlone(full, 4);
}

TEST(AttentionSegments, GradientsMatchFiniteDifferences) {
  // Causal multi-head: row 0 holds three documents, row 1 two.
  OpCase causal{"nn.Attention",
                "",
                {F64({2, 6, 2, 3}), F64({2, 6, 2, 3}), F64({2, 6, 2, 3}), I64({2, 6})},
                {{3, Ids({0, 0, 1, 1, 1, 2, 0, 0, 0, 0, 1, 1})}},
                {3}};
  EXPECT_EQ(CheckGradients(causal), 3 * 72);
  // Grouped-query, not causal, dv != d.
  OpCase gqa{"nn.Attention",
             "causal=false scale=0.7",
             {F64({1, 5, 4, 2}), F64({1, 5, 2, 2}), F64({1, 5, 2, 3}), I64({1, 5})},
             {{3, Ids({0, 1, 1, 2, 2})}},
             {3}};
  EXPECT_EQ(CheckGradients(gqa), 40 + 20 + 30);
}

TEST(AttentionSegments, OneSegmentIsBitwiseTheUnsegmentedKernel) {
  // f32 runs oneDNN's GEMMs; 300 positions make several query and key blocks.
  for (const char* attrs : {"", "causal=false"}) {
    std::mt19937_64 rng(5);
    Tensor q = Random(DT_F32, {2, 300, 2, 16}, rng), k = Random(DT_F32, {2, 300, 1, 16}, rng);
    Tensor v = Random(DT_F32, {2, 300, 1, 8}, rng), w = Random(DT_F32, {2, 300, 2, 8}, rng);
    Grads plain = Attend(attrs, {q, k, v}, w);
    Grads zeros = Attend(attrs, {q, k, v, Tensor::Zeros(DT_I64, {2, 300})}, w);
    ASSERT_TRUE(plain.dv.defined() && zeros.dv.defined());
    EXPECT_EQ(plain.o.ToVector(), zeros.o.ToVector()) << attrs;
    EXPECT_EQ(plain.lse.ToVector(), zeros.lse.ToVector()) << attrs;
    EXPECT_EQ(plain.dq.ToVector(), zeros.dq.ToVector()) << attrs;
    EXPECT_EQ(plain.dk.ToVector(), zeros.dk.ToVector()) << attrs;
    EXPECT_EQ(plain.dv.ToVector(), zeros.dv.ToVector()) << attrs;
  }
}

TEST(AttentionSegments, ErrorsNameTheProblem) {
  auto error = [](Shape q, Shape kv, TensorType segments, std::vector<int64_t> values) {
    auto out =
        RunOp({"nn.Attention", "", {F64(q), F64(kv), F64(kv), segments}, {{3, Ids(values)}}});
    return out.ok() ? std::string() : out.status().message();
  };
  // Decoding against a cache: 2 queries after 3 cached keys.
  EXPECT_NE(error({1, 2, 2, 3}, {1, 5, 2, 3}, I64({1, 2}), {0, 0}).find("no cached keys"),
            std::string::npos);
  EXPECT_NE(error({1, 3, 2, 3}, {1, 3, 2, 3}, I64({1, 4}), {0, 0, 1, 1}).find("[batch, time]"),
            std::string::npos);
  EXPECT_NE(error({1, 3, 2, 3}, {1, 3, 2, 3}, I64({1, 3}), {0, 1, 0}).find("must not decrease"),
            std::string::npos);
  EXPECT_FALSE(error({1, 3, 2, 3}, {1, 3, 2, 3}, F64({1, 3}), {0, 0, 0}).empty());
}

// ---- DeepSeek-V3 with doc_separator

std::map<std::string, AttrValue> TinyV3(int64_t doc_separator) {
  std::map<std::string, AttrValue> a = TinyV3Attrs(DT_F64);
  a["doc_separator"].set_i(doc_separator);
  return a;
}

constexpr int64_t kSeparator = 12;

StatusOr<std::shared_ptr<const Program>> BuildV3(int64_t doc_separator, int64_t batch, int64_t time,
                                                 const std::string& loss) {
  WEIR_ASSIGN_OR_RETURN(Graph g, LoadTestGraph(TestGraph("good/deepseek_import.pbtxt")));
  ProgramOptions options;
  options.loss = loss;
  std::vector<TensorType> types = {{DT_I64, {batch, time}}, {DT_I64, {batch, time}}};
  return Program::Build(g, "DeepseekV3", TinyV3(doc_separator), types, TestRegistry(), options);
}

// The logits [1, time, vocab] of one row, by the full program (MTP included).
std::vector<double> Logits(const Program& p, const ParamStore& params,
                           const std::vector<int64_t>& tokens) {
  int64_t time = static_cast<int64_t>(tokens.size());
  Tensor ids = Tensor::FromValues(DT_I64, {1, time}, Ids(tokens));
  auto out = p.Run({ids, ids}, params);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  return out.ok() ? out->values[1].ToVector() : std::vector<double>();
}

TEST(PackedDeepseekV3, EachDocumentHasTheLogitsItHasAlone) {
  std::vector<int64_t> a = {3, 5, 1, 7, 2, kSeparator}, b = {4, 4, 9, 0, kSeparator};
  std::vector<int64_t> packed = a;
  packed.insert(packed.end(), b.begin(), b.end());
  int64_t vocab = 13, n = static_cast<int64_t>(packed.size());
  auto packed_model = BuildV3(kSeparator, 1, n, "");
  auto unpacked_model = BuildV3(-1, 1, n, "");
  auto model_a = BuildV3(kSeparator, 1, static_cast<int64_t>(a.size()), "");
  auto model_b = BuildV3(kSeparator, 1, static_cast<int64_t>(b.size()), "");
  ASSERT_TRUE(packed_model.ok()) << packed_model.status().ToString();
  ASSERT_TRUE(unpacked_model.ok() && model_a.ok() && model_b.ok());
  ParamStore params;
  params.Initialize((*packed_model)->params(), 6);
  std::vector<double> together = Logits(**packed_model, params, packed);
  std::vector<double> alone_a = Logits(**model_a, params, a);
  std::vector<double> alone_b = Logits(**model_b, params, b);
  ASSERT_EQ(together.size(), static_cast<size_t>(n * vocab));
  std::vector<double> part_a(together.begin(), together.begin() + alone_a.size());
  std::vector<double> part_b(together.begin() + static_cast<int64_t>(alone_a.size()),
                             together.end());
  ExpectNear(part_a, alone_a, 1e-5, "document a ");
  ExpectNear(part_b, alone_b, 1e-5, "document b ");
  // Without the separator the second document reads the first: the check above can fail.
  std::vector<double> leaky = Logits(**unpacked_model, params, packed);
  ASSERT_EQ(leaky.size(), together.size());
  double moved = 0;
  for (size_t i = alone_a.size(); i < leaky.size(); ++i)
    moved = std::max(moved, std::abs(leaky[i] - together[i]));
  EXPECT_GT(moved, 1e-3);
  for (size_t i = 0; i < alone_a.size(); ++i) EXPECT_EQ(leaky[i], together[i]);
}

TEST(PackedDeepseekV3, PackedGradientMatchesFiniteDifferences) {
  auto p = BuildV3(kSeparator, 2, 7, "loss");
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ParamStore params;
  params.Initialize((*p)->params(), 3);
  std::vector<Tensor> inputs = RandomTokens(2, 7, 12, 4);  // ids below the separator
  for (int64_t at : {2, 4, 7 + 3}) StoreFromDouble(inputs[0].raw_data(), DT_I64, at, kSeparator);
  EXPECT_GT(CheckModelGradients(**p, params, inputs, 4, 1e-6), 100);
}

}  // namespace
}  // namespace weir::testing
