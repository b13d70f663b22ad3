// The reward model (plugins/reward/model, graphs/models/deepseek_v3_reward.pbtxt): the
// Bradley-Terry loss against hand-computed values, its gradient against central differences in
// f64 and its shape errors; reward.PreferencePairs' token layout; reward.Model's scores in a
// graph beside the rule rewards; and a tiny DeepseekV3Reward that learns a synthetic preference
// and ranks held-out pairs it never saw.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "test_util.h"
#include "tiny_v3.h"
#include "weir/json.h"
#include "weir/testing/op_check.h"

namespace weir::testing {
namespace {

namespace fs = std::filesystem;

TensorType Of(DataType t, Shape s) { return {t, std::move(s)}; }

double Softplus(double x) { return std::log1p(std::exp(x)); }

struct Bt {
  double loss = 0, accuracy = 0;
  DataType dtype = DT_F32;
};

Bt RunBt(const std::vector<double>& scores, DataType dt = DT_F64) {
  OpCase c{"reward.BradleyTerryLoss",
           "",
           {Of(dt, {static_cast<int64_t>(scores.size())})},
           {{0, scores}}};
  auto out = RunOp(c);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  if (!out.ok()) return {};
  return {(*out)[0].At(0), (*out)[1].At(0), (*out)[0].dtype()};
}

// d Σ(output · 1) / d scores, as a trainer's program computes it.
std::vector<double> ScoreGrads(const std::vector<double>& scores, int output) {
  OpCase c{"reward.BradleyTerryLoss",
           "",
           {Of(DT_F64, {static_cast<int64_t>(scores.size())})},
           {{0, scores}}};
  c.output = output;
  auto graph = OpGraph(c, true);
  EXPECT_TRUE(graph.ok()) << graph.status().ToString();
  if (!graph.ok()) return {};
  std::vector<TensorType> types = {c.inputs[0], Of(DT_F64, {})};
  std::vector<Tensor> inputs = {CaseInputs(c)[0], Tensor::Full(DT_F64, {}, 1.0)};
  ProgramOptions options;
  options.loss = "loss";
  options.input_grads = {"x0"};
  auto program = Program::Build(*graph, "F", {}, types, TestRegistry(), options);
  EXPECT_TRUE(program.ok()) << program.status().ToString();
  if (!program.ok()) return {};
  ParamStore params;
  auto run = (*program)->Run(inputs, params);
  EXPECT_TRUE(run.ok()) << run.status().ToString();
  return run.ok() ? run->input_grads[0].ToVector() : std::vector<double>{};
}

TEST(RewardBradleyTerry, HandComputed) {
  // One pair: chosen 2, rejected 0 -> softplus(-2); the other way round -> softplus(2).
  Bt one = RunBt({2, 0});
  EXPECT_EQ(one.dtype, DT_F64);
  EXPECT_NEAR(one.loss, Softplus(-2), 1e-15);
  EXPECT_EQ(one.accuracy, 1.0);
  Bt wrong = RunBt({0, 2});
  EXPECT_NEAR(wrong.loss, Softplus(2), 1e-15);
  EXPECT_EQ(wrong.accuracy, 0.0);
  // Three pairs: margins 0 (a tie is no win), -4 and 1.5.
  Bt three = RunBt({1, -1, 2, 1, 3, 0.5});
  EXPECT_NEAR(three.loss, (std::log(2.0) + Softplus(4) + Softplus(-1.5)) / 3, 1e-15);
  EXPECT_NEAR(three.accuracy, 1.0 / 3, 1e-15);
  // The loss of narrow scores comes out in f32.
  for (DataType dt : {DT_F32, DT_BF16, DT_F16}) {
    SCOPED_TRACE(DataTypeName(dt));
    Bt narrow = RunBt({2, 0}, dt);
    EXPECT_EQ(narrow.dtype, DT_F32);
    EXPECT_NEAR(narrow.loss, Softplus(-2), 1e-6);
    EXPECT_EQ(narrow.accuracy, 1.0);
  }
}

TEST(RewardBradleyTerry, StableForLargeMargins) {
  Bt sure = RunBt({1000, -1000});
  EXPECT_EQ(sure.loss, 0.0);  // softplus(-2000) underflows to exactly 0, not log(1 + inf)
  Bt wrong = RunBt({-1000, 1000});
  EXPECT_NEAR(wrong.loss, 2000.0, 1e-12);  // not inf
  std::vector<double> g = ScoreGrads({-1000, 1000}, 0);
  ASSERT_EQ(g.size(), 2u);
  EXPECT_NEAR(g[0], -1.0, 1e-15);  // -σ(2000)
  EXPECT_NEAR(g[1], 1.0, 1e-15);
  g = ScoreGrads({1000, -1000}, 0);
  ASSERT_EQ(g.size(), 2u);
  EXPECT_EQ(g[0], 0.0);
  EXPECT_TRUE(std::isfinite(g[0]) && std::isfinite(g[1]));
}

TEST(RewardBradleyTerry, GradientMatchesFiniteDifferences) {
  OpCase c{"reward.BradleyTerryLoss", "", {Of(DT_F64, {8})}};
  c.seed = 3;
  EXPECT_EQ(CheckGradients(c, 1e-8), 8);
  // Margins far from 0 on both sides, where σ saturates.
  OpCase wide{"reward.BradleyTerryLoss", "", {Of(DT_F64, {6})}, {{0, {7.5, -3, 0.25, -6, 4, 0.5}}}};
  EXPECT_EQ(CheckGradients(wide, 1e-8), 6);
  // Closed form: d loss / d s_chosen = -σ(-m) / N, d loss / d s_rejected = +σ(-m) / N.
  std::vector<double> g = ScoreGrads({2, 0, 0, 1}, 0);
  ASSERT_EQ(g.size(), 4u);
  auto sigmoid = [](double x) { return 1 / (1 + std::exp(-x)); };
  EXPECT_NEAR(g[0], -sigmoid(-2) / 2, 1e-15);
  EXPECT_NEAR(g[1], -sigmoid(1) / 2, 1e-15);
  EXPECT_NEAR(g[2], sigmoid(-2) / 2, 1e-15);
  EXPECT_NEAR(g[3], sigmoid(1) / 2, 1e-15);
}

TEST(RewardBradleyTerry, AccuracyCarriesNoGradient) {
  std::vector<double> g = ScoreGrads({2, 0, 0, 1}, /*accuracy*/ 1);
  ASSERT_EQ(g.size(), 4u);
  for (double v : g) EXPECT_EQ(v, 0.0);
}

TEST(RewardBradleyTerry, ShapeErrorsSayWhatWasExpected) {
  struct Bad {
    TensorType scores;
    std::string message;
  };
  std::vector<Bad> cases = {
      {Of(DT_F32, {3}),
       "scores must hold an even, non-zero number 2N of rows (N chosen, then N "
       "rejected), got f32[3]"},
      {Of(DT_F32, {0}),
       "scores must hold an even, non-zero number 2N of rows (N chosen, then N "
       "rejected), got f32[0]"},
      {Of(DT_F32, {2, 2}),
       "scores must be a vector [2N]: the N chosen completions' scores, then "
       "the N rejected ones of the same pairs; got f32[2, 2]"},
      {Of(DT_I64, {2}), "scores must be f32, bf16, f16 or f64, got i64[2]"},
  };
  for (const Bad& b : cases) {
    SCOPED_TRACE(b.scores.ToString());
    auto out = RunOp(OpCase{"reward.BradleyTerryLoss", "", {b.scores}});
    ASSERT_FALSE(out.ok());
    EXPECT_NE(out.status().ToString().find(b.message), std::string::npos)
        << out.status().ToString();
  }
}

// ---------------------------------------------------------------------------------------------
// The stream ops, in graphs over JSONL files.

constexpr int64_t kEos = 256, kUser = 257, kAssistant = 258;

// A byte-level tokenizer without merges (byte b is id b) and the chat specials, so the ids of a
// text are its bytes.
std::string ByteTokenizerJson() {
  std::string vocab;
  for (int b = 0; b < 256; ++b)
    vocab += (b ? ", " : "") + JsonQuote(ByteChar(b)) + ": " + std::to_string(b);
  return "{\"version\": \"1.0\", \"added_tokens\": ["
         "{\"id\": 256, \"content\": \"<|eos|>\", \"special\": true}, "
         "{\"id\": 257, \"content\": \"<|user|>\", \"special\": true}, "
         "{\"id\": 258, \"content\": \"<|assistant|>\", \"special\": true}], "
         "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, "
         "\"use_regex\": true}, \"model\": {\"type\": \"BPE\", \"vocab\": {" +
         vocab + "}, \"merges\": []}}";
}

// What reward.PreferencePairs and reward.Model make of a row with the default template and end.
std::vector<int64_t> Sequence(const std::string& prompt, const std::string& completion) {
  std::vector<int64_t> ids = {kUser};
  for (unsigned char c : prompt) ids.push_back(c);
  ids.push_back(kAssistant);
  for (unsigned char c : completion) ids.push_back(c);
  ids.push_back(kEos);
  return ids;
}

class RewardModelOps : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("reward_model_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream(dir_ / "tokenizer.json") << ByteTokenizerJson();
  }

  Status Run(const std::string& rows, const std::string& graph,
             const std::vector<std::string>& sets = {}) {
    std::ofstream(dir_ / "rows.jsonl") << rows;
    std::ofstream(dir_ / "graph.pbtxt") << graph;
    return RunGraphFile(dir_ / "graph.pbtxt", dir_ / "out", sets).status;
  }

  std::vector<google::protobuf::Struct> Rows(const std::string& file) {
    return ReadJsonlRows(dir_ / "out" / file);
  }

  static std::vector<double> Numbers(const google::protobuf::Struct& row, const std::string& key) {
    std::vector<double> out;
    for (const auto& v : row.fields().at(key).list_value().values())
      out.push_back(v.number_value());
    return out;
  }

  fs::path dir_;
};

constexpr char kPairs[] =
    "{\"prompt\": \"1+2?\", \"chosen\": \"3\", \"rejected\": \"four\"}\n"
    "{\"prompt\": \"x\", \"chosen\": \"yes\", \"rejected\": \"no\"}\n"
    "{\"prompt\": \"q\", \"chosen\": \"a\", \"rejected\": \"bb\"}\n";

std::string PairsGraph(const std::string& attrs) {
  return "node { name: \"rows\" op: \"io.JsonlSource\" attr: \"path=rows.jsonl\" }\n"
         "node { name: \"pairs\" op: \"reward.PreferencePairs\" input: \"rows\"\n"
         "       attr: \"tokenizer=tokenizer.json shuffle=false " +
         attrs +
         "\" }\n"
         "node { name: \"write\" op: \"io.JsonlSink\" input: \"pairs\" "
         "attr: \"path=batches.jsonl columns=[tokens, last]\" }\n";
}

TEST_F(RewardModelOps, PreferencePairsLaysOutChosenThenRejected) {
  Status s = Run(kPairs, PairsGraph("batch_size=2 pad_id=7 pad_to_multiple=1"));
  ASSERT_TRUE(s.ok()) << s.ToString();
  std::vector<google::protobuf::Struct> rows = Rows("batches.jsonl");
  // Batch 1: the chosen of pairs 0 and 1, then their rejected; batch 2: pair 2 alone.
  std::vector<std::vector<int64_t>> want = {Sequence("1+2?", "3"),    Sequence("x", "yes"),
                                            Sequence("1+2?", "four"), Sequence("x", "no"),
                                            Sequence("q", "a"),       Sequence("q", "bb")};
  std::vector<int64_t> width = {11, 11, 11, 11, 6, 6};  // each batch's longest sequence
  ASSERT_EQ(rows.size(), want.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    SCOPED_TRACE(r);
    std::vector<double> tokens = Numbers(rows[r], "tokens"), last = Numbers(rows[r], "last");
    ASSERT_EQ(static_cast<int64_t>(tokens.size()), width[r]);
    ASSERT_EQ(last.size(), tokens.size());
    for (size_t t = 0; t < tokens.size(); ++t) {
      bool real = t < want[r].size();
      EXPECT_EQ(tokens[t], real ? static_cast<double>(want[r][t]) : 7.0) << t;
      EXPECT_EQ(last[t], t + 1 == want[r].size() ? 1.0 : 0.0) << t;  // one-hot at the end token
    }
  }
}

TEST_F(RewardModelOps, PreferencePairsPadsToAMultipleAndKeepsTheEndWhenTruncating) {
  Status s = Run(kPairs, PairsGraph("batch_size=3 pad_to_multiple=8 max_len=10 end=''"));
  ASSERT_TRUE(s.ok()) << s.ToString();
  std::vector<google::protobuf::Struct> rows = Rows("batches.jsonl");
  ASSERT_EQ(rows.size(), 6u);
  // Without an end token "<|user|>1+2?<|assistant|>four" is 10 ids: max_len keeps it whole;
  // "<|user|>x<|assistant|>yes" is 6. The longest, 10, rounds up to 16.
  std::vector<double> tokens = Numbers(rows[3], "tokens"), last = Numbers(rows[3], "last");
  ASSERT_EQ(tokens.size(), 16u);
  EXPECT_EQ(tokens[9], 'r');
  EXPECT_EQ(last[9], 1.0);
  EXPECT_EQ(tokens[10], 0.0);  // pad_id's default
  // With max_len 8 the 10 ids keep their last 8: the score is still read at the completion's end.
  s = Run(kPairs, PairsGraph("batch_size=3 pad_to_multiple=1 max_len=8 end=''"));
  ASSERT_TRUE(s.ok()) << s.ToString();
  rows = Rows("batches.jsonl");
  ASSERT_EQ(rows.size(), 6u);
  tokens = Numbers(rows[3], "tokens");
  last = Numbers(rows[3], "last");
  ASSERT_EQ(tokens.size(), 8u);
  std::vector<double> want = {'2', '?', kAssistant, 'f', 'o', 'u', 'r'};
  EXPECT_EQ(tokens[0], '+');
  EXPECT_EQ(std::vector<double>(tokens.begin() + 1, tokens.end()), want);
  EXPECT_EQ(last[7], 1.0);
}

TEST_F(RewardModelOps, PreferencePairsErrorsNameTheAttr) {
  Status s = Run("{\"prompt\": \"p\", \"chosen\": \"a\", \"worse\": \"b\"}\n", PairsGraph(""));
  EXPECT_NE(s.ToString().find("rejected_column: batch has no column 'rejected'"), std::string::npos)
      << s.ToString();
  s = Run(kPairs, PairsGraph("end=eos"));
  EXPECT_NE(s.ToString().find("attr 'end': 'eos' is not a special token of the tokenizer"),
            std::string::npos)
      << s.ToString();
  s = Run(kPairs, PairsGraph("template='no prompt'"));
  EXPECT_NE(s.ToString().find("attr 'template': template 'no prompt' must hold {prompt} exactly "
                              "once"),
            std::string::npos)
      << s.ToString();
}

std::string ModelFile() {
  return std::string(WEIR_SOURCE_DIR) + "/graphs/models/deepseek_v3_reward.pbtxt";
}

// A tiny DeepseekV3 (tiny_v3.h's sizes) over the byte tokenizer's 259 ids.
constexpr char kTinyByteModel[] =
    "vocab_size=259 hidden_size=8 intermediate_size=12 moe_intermediate_size=4 "
    "num_hidden_layers=2 first_k_dense_replace=1 num_attention_heads=2 q_lora_rank=6 "
    "kv_lora_rank=4 qk_nope_head_dim=4 qk_rope_head_dim=4 v_head_dim=3 n_routed_experts=4 "
    "n_shared_experts=1 num_experts_per_tok=2 n_group=2 topk_group=1 rope_factor=4.0 "
    "original_max_position_embeddings=4 init_std=0.4";

// reward.Model in the slot of a rule reward, combined with reward.Format as a GRPO graph would.
std::string ScoreGraph() {
  return "import: \"" + ModelFile() +
         "\"\n"
         "param: \"rows_per_pass=64\"\n"
         "resource { name: \"rm\" kind: \"model\" attr: \"function=DeepseekV3Reward seed=3\"\n"
         "           attr: \"attrs='" +
         kTinyByteModel +
         "'\" }\n"
         "node { name: \"rows\" op: \"io.JsonlSource\" attr: \"path=rows.jsonl batch_size=4\" }\n"
         "node { name: \"scored\" op: \"reward.Model\" input: \"rows\"\n"
         "       attr: \"model=rm tokenizer=tokenizer.json batch_size=$rows_per_pass\" }\n"
         "node { name: \"format\" op: \"reward.Format\" input: \"scored\" }\n"
         "node { name: \"reward\" op: \"reward.Combine\" input: \"format\"\n"
         "       attr: \"columns=[rewards/model, rewards/format] weights=[1, 0.5]\" }\n"
         "node { name: \"write\" op: \"io.JsonlSink\" input: \"reward\" attr: "
         "\"path=scored.jsonl\" "
         "}\n";
}

TEST_F(RewardModelOps, ModelScoresRowsIndependentlyOfTheirBatch) {
  const std::string rows =
      "{\"prompt\": \"1+2?\", \"completion\": \"<think>1+2=3</think><answer>3</answer>\"}\n"
      "{\"prompt\": \"1+2?\", \"completion\": \"4\"}\n"
      "{\"prompt\": \"a much longer prompt than the others\", \"completion\": \"x\"}\n"
      "{\"prompt\": \"1+2?\", \"completion\": \"4\"}\n"
      "{\"prompt\": \"1+2?\", \"completion\": \"5\"}\n";
  // All rows of a batch in one padded forward pass, then one row per pass.
  std::vector<std::vector<double>> scores, totals;
  for (const char* per_pass : {"rows_per_pass=64", "rows_per_pass=1"}) {
    Status s = Run(rows, ScoreGraph(), {per_pass});
    ASSERT_TRUE(s.ok()) << s.ToString();
    std::vector<google::protobuf::Struct> scored = Rows("scored.jsonl");
    ASSERT_EQ(scored.size(), 5u);
    scores.emplace_back();
    totals.emplace_back();
    for (const auto& row : scored) {
      scores.back().push_back(row.fields().at("rewards/model").number_value());
      totals.back().push_back(row.fields().at("reward").number_value());
      EXPECT_TRUE(row.fields().count("completion")) << "input columns pass through";
    }
  }
  for (size_t r = 0; r < 5; ++r) {
    SCOPED_TRACE(r);
    EXPECT_NEAR(scores[0][r], scores[1][r], 1e-5);  // padding and batch-mates change nothing
    double format = r == 0 ? 1.0 : 0.0;
    EXPECT_NEAR(totals[0][r], scores[0][r] + 0.5 * format, 1e-12);
  }
  EXPECT_NEAR(scores[0][1], scores[0][3], 1e-6);  // the same row twice in one batch
  EXPECT_NE(scores[0][1], scores[0][4]);          // another completion
}

TEST_F(RewardModelOps, ModelErrorsNameTheColumn) {
  Status s = Run("{\"prompt\": \"p\", \"text\": \"c\"}\n", ScoreGraph());
  EXPECT_NE(s.ToString().find("batch has no column 'completion'"), std::string::npos)
      << s.ToString();
}

// ---------------------------------------------------------------------------------------------
// DeepseekV3Reward itself: gradients, pruning, and learning a preference.

StatusOr<std::shared_ptr<const Program>> BuildReward(
    DataType dt, int64_t rows, int64_t time, const std::string& loss,
    std::vector<std::string> outputs = {}, const std::string& function = "DeepseekV3Reward") {
  WEIR_ASSIGN_OR_RETURN(Graph g, LoadTestGraph(ModelFile()));
  ProgramOptions options;
  options.loss = loss;
  options.outputs = std::move(outputs);
  DataType last = dt == DT_F64 ? DT_F64 : DT_F32;
  std::vector<TensorType> types = {{DT_I64, {rows, time}}, {last, {rows, time}}};
  return Program::Build(g, function, TinyV3Attrs(dt), types, TestRegistry(), options);
}

// Pairs over tiny_v3.h's 13 ids: both sequences share random ids from {1..4, 7..11} and end with
// 12 (an end token, where the score is read); at one random position before the end the chosen
// sequence holds 5 and the rejected one 6. The score is read at the end token, so the model must
// carry what it saw earlier there by attention. Lengths vary from 4 to 8 (right-padded with 0).
std::vector<Tensor> SyntheticPairs(int64_t pairs, uint64_t seed, DataType last_dtype = DT_F32) {
  const int64_t time = 8;
  std::mt19937_64 rng(seed);
  std::vector<int64_t> filler = {1, 2, 3, 4, 7, 8, 9, 10, 11};
  std::vector<double> tokens(static_cast<size_t>(2 * pairs * time), 0.0), last(tokens.size(), 0.0);
  for (int64_t p = 0; p < pairs; ++p) {
    int64_t length = 4 + static_cast<int64_t>(rng() % 5);
    int64_t at = static_cast<int64_t>(rng() % static_cast<uint64_t>(length - 1));
    for (int64_t t = 0; t < length; ++t) {
      double id = t == length - 1 ? 12.0 : static_cast<double>(filler[rng() % filler.size()]);
      for (int64_t half : {int64_t{0}, pairs}) {
        size_t i = static_cast<size_t>((p + half) * time + t);
        tokens[i] = t == at ? (half == 0 ? 5.0 : 6.0) : id;
        last[i] = t == length - 1 ? 1.0 : 0.0;
      }
    }
  }
  return {Tensor::FromValues(DT_I64, {2 * pairs, time}, tokens),
          Tensor::FromValues(last_dtype, {2 * pairs, time}, last)};
}

TEST(RewardDeepseekV3, GradientMatchesFiniteDifferences) {
  auto p = BuildReward(DT_F64, 6, 8, "loss");
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ParamStore params;
  params.Initialize((*p)->params(), 5);
  std::vector<Tensor> inputs = SyntheticPairs(3, 9, DT_F64);
  auto run = (*p)->Run(inputs, params);
  ASSERT_TRUE(run.ok()) << run.status().ToString();
  // The new head and the model under it are trained; the language-model head and MTP, which
  // the loss does not reach, get gradients of zeros.
  auto any_nonzero = [](const Tensor& g) {
    std::vector<double> v = g.ToVector();
    return std::any_of(v.begin(), v.end(), [](double x) { return x != 0; });
  };
  for (const char* name : {"score_head.weight", "embed.weight", "moe_layers.0.ffn.experts.w1"}) {
    ASSERT_TRUE(run->param_grads.count(name)) << name;
    EXPECT_TRUE(any_nonzero(run->param_grads.at(name))) << name;
  }
  int untouched = 0;
  for (const auto& [name, g] : run->param_grads) {
    if (name != "head.weight" && !name.starts_with("mtp.")) continue;
    EXPECT_FALSE(any_nonzero(g)) << name;
    ++untouched;
  }
  EXPECT_GT(untouched, 10);
  EXPECT_GT(CheckModelGradients(**p, params, inputs, 4, 1e-6), 80);
}

// A program that names the outputs it needs leaves out the language-model head, its loss and
// MTP with their parameters, and computes the same scores and loss.
TEST(RewardDeepseekV3, NamingTheOutputsLeavesOutTheLanguageModelHead) {
  auto full = BuildReward(DT_F32, 4, 8, "");
  auto pruned = BuildReward(DT_F32, 4, 8, "", {"loss", "accuracy", "scores"});
  auto score = BuildReward(DT_F32, 4, 8, "", {}, "DeepseekV3RewardScore");
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  ASSERT_TRUE(pruned.ok()) << pruned.status().ToString();
  ASSERT_TRUE(score.ok()) << score.status().ToString();
  std::set<std::string> names;
  for (const ParamInfo& info : (*pruned)->params()) names.insert(info.name);
  EXPECT_TRUE(names.count("score_head.weight"));
  EXPECT_FALSE(names.count("head.weight"));
  for (const std::string& n : names) EXPECT_FALSE(n.starts_with("mtp.")) << n;
  EXPECT_LT((*pruned)->stats().forward_nodes, (*full)->stats().forward_nodes);
  ParamStore params;
  params.Initialize((*full)->params(), 2);
  std::vector<Tensor> inputs = SyntheticPairs(2, 4);
  auto a = (*full)->Run(inputs, params);
  auto b = (*pruned)->Run(inputs, params);
  auto c = (*score)->Run(inputs, params);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  ASSERT_EQ((*full)->output_names(), (std::vector<std::string>{"loss", "accuracy", "scores"}));
  for (size_t o = 0; o < 3; ++o) EXPECT_EQ(a->values[o].ToVector(), b->values[o].ToVector()) << o;
  EXPECT_EQ(a->values[2].ToVector(), c->values[0].ToVector());
}

// A few dozen Adam steps on synthetic pairs: the held-out pairs (other sequences, other
// positions) are ranked right far more often than chance.
TEST(RewardDeepseekV3, LearnsAPreferenceThatHoldsOnHeldOutPairs) {
  const int64_t pairs = 16, steps = 40;
  auto train = BuildReward(DT_F32, 2 * pairs, 8, "loss");
  auto eval = BuildReward(DT_F32, 2 * 64, 8, "", {"loss", "accuracy"});
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  ASSERT_TRUE(eval.ok()) << eval.status().ToString();
  ParamStore params;
  params.Initialize((*train)->params(), 1);
  std::vector<Tensor> heldout = SyntheticPairs(64, 1000);
  auto evaluate = [&] {
    auto run = (*eval)->Run(heldout, params);
    EXPECT_TRUE(run.ok()) << run.status().ToString();
    return run.ok() ? std::make_pair(run->values[0].At(0), run->values[1].At(0))
                    : std::make_pair(0.0, 0.0);
  };
  auto [loss0, accuracy0] = evaluate();
  // Adam (β 0.9, 0.999), lr 0.02, no weight decay.
  std::map<std::string, std::vector<double>> m, v;
  const double lr = 0.02, b1 = 0.9, b2 = 0.999;
  for (int64_t step = 1; step <= steps; ++step) {
    auto run = (*train)->Run(SyntheticPairs(pairs, static_cast<uint64_t>(step)), params);
    ASSERT_TRUE(run.ok()) << run.status().ToString();
    for (const auto& [name, grad] : run->param_grads) {
      Tensor* p = params.Find(name);
      ASSERT_NE(p, nullptr) << name;
      auto& mn = m[name];
      auto& vn = v[name];
      mn.resize(static_cast<size_t>(p->numel()), 0.0);
      vn.resize(mn.size(), 0.0);
      for (int64_t i = 0; i < p->numel(); ++i) {
        double g = grad.At(i);
        auto k = static_cast<size_t>(i);
        mn[k] = b1 * mn[k] + (1 - b1) * g;
        vn[k] = b2 * vn[k] + (1 - b2) * g * g;
        double mh = mn[k] / (1 - std::pow(b1, static_cast<double>(step)));
        double vh = vn[k] / (1 - std::pow(b2, static_cast<double>(step)));
        StoreFromDouble(p->raw_data(), p->dtype(), i, p->At(i) - lr * mh / (std::sqrt(vh) + 1e-8));
      }
    }
  }
  auto [loss1, accuracy1] = evaluate();
  std::printf("held-out pairs: accuracy %.3f -> %.3f, loss %.4f -> %.4f\n", accuracy0, accuracy1,
              loss0, loss1);
  EXPECT_LT(accuracy0, 0.6);  // the untrained model does not rank them (seeded: 0.14)
  EXPECT_LT(loss1, loss0);
  EXPECT_GE(accuracy1, 0.8);  // chance is 0.5; measured 1.0
}

}  // namespace
}  // namespace weir::testing
