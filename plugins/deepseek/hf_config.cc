#include "hf_config.h"

#include <cmath>
#include <optional>

#include "weir/attr.h"
#include "weir/json.h"

namespace weir::deepseek {

namespace fs = std::filesystem;
using google::protobuf::Struct;
using google::protobuf::Value;

namespace {

// Reads typed fields of one JSON object, collecting one error per bad field.
class FieldReader {
 public:
  // `prefix` names a nested object in messages: "rope_scaling." gives 'rope_scaling.factor'.
  FieldReader(const Struct& json, std::string where, std::string prefix = "")
      : json_(json), where_(std::move(where)), prefix_(std::move(prefix)) {}

  const Value* Find(const std::string& key) const {
    auto it = json_.fields().find(key);
    return it == json_.fields().end() ? nullptr : &it->second;
  }
  bool IsNull(const std::string& key) const {
    const Value* v = Find(key);
    return v != nullptr && v->kind_case() == Value::kNullValue;
  }
  void Error(const std::string& key, const std::string& why) {
    errors_.push_back(InvalidArgument(where_ + ": field '" + prefix_ + key + "' " + why));
  }
  // Absent: *out keeps its default. Null: `null_value` when given, else an error.
  void Int(const std::string& key, int64_t* out, std::optional<int64_t> null_value = {}) {
    const Value* v = Find(key);
    if (v == nullptr) return;
    if (v->kind_case() == Value::kNullValue && null_value) {
      *out = *null_value;
      return;
    }
    double d = v->number_value();
    if (v->kind_case() != Value::kNumberValue || d != std::floor(d) || std::abs(d) > 1e15) {
      Error(key, "expects an integer, got " + JsonValueText(*v));
      return;
    }
    *out = static_cast<int64_t>(d);
  }
  void Float(const std::string& key, double* out) {
    const Value* v = Find(key);
    if (v == nullptr) return;
    if (v->kind_case() != Value::kNumberValue) {
      Error(key, "expects a number, got " + JsonValueText(*v));
      return;
    }
    *out = v->number_value();
  }
  void Bool(const std::string& key, bool* out) {
    const Value* v = Find(key);
    if (v == nullptr) return;
    if (v->kind_case() != Value::kBoolValue) {
      Error(key, "expects true or false, got " + JsonValueText(*v));
      return;
    }
    *out = v->bool_value();
  }
  void String(const std::string& key, std::string* out, const std::vector<std::string>& allowed) {
    const Value* v = Find(key);
    if (v == nullptr) return;
    if (v->kind_case() != Value::kStringValue) {
      Error(key, "expects a string, got " + JsonValueText(*v));
      return;
    }
    bool ok = allowed.empty();
    std::string list;
    for (const std::string& a : allowed) {
      ok = ok || a == v->string_value();
      list += (list.empty() ? "" : ", ") + a;
    }
    if (!ok) {
      Error(key, "is '" + v->string_value() + "'; supported: " + list);
      return;
    }
    *out = v->string_value();
  }
  // A field whose only supported value is `expected` (absent is fine).
  void Require(const std::string& key, const Value& expected) {
    const Value* v = Find(key);
    if (v == nullptr || v->kind_case() == Value::kNullValue) return;
    if (JsonValueText(*v) != JsonValueText(expected))
      Error(key, "is " + JsonValueText(*v) + "; only " + JsonValueText(expected) + " is supported");
  }
  std::vector<Status>& errors() { return errors_; }

 private:
  const Struct& json_;
  std::string where_;
  std::string prefix_;
  std::vector<Status> errors_;
};

Value NumberValue(double d) {
  Value v;
  v.set_number_value(d);
  return v;
}
Value BoolValue(bool b) {
  Value v;
  v.set_bool_value(b);
  return v;
}
Value StringValue(const std::string& s) {
  Value v;
  v.set_string_value(s);
  return v;
}

// HF's DeepseekV2Config defaults where they differ from DeepseekV3Config.
void UseV2Defaults(HfConfig& c) {
  c.vocab_size = 102400;
  c.hidden_size = 4096;
  c.intermediate_size = 11008;
  c.moe_intermediate_size = 1407;
  c.num_hidden_layers = 30;
  c.num_attention_heads = 32;
  c.n_routed_experts = 0;
  c.n_shared_experts = 0;
  c.num_experts_per_tok = 0;
  c.n_group = 1;
  c.topk_group = 1;
  c.routed_scaling_factor = 1.0;
  c.topk_method = "greedy";
  c.scoring_func = "softmax";
  c.norm_topk_prob = false;
  c.first_k_dense_replace = 0;
  c.max_position_embeddings = 2048;
  c.num_nextn_predict_layers = 0;
}

}  // namespace

StatusOr<HfConfig> ParseHfConfig(const Struct& json, const std::string& file) {
  HfConfig c;
  c.num_nextn_predict_layers = 1;  // HF DeepseekV3Config's default
  FieldReader r(json, file);
  r.String("model_type", &c.model_type, {"deepseek_v3", "deepseek_v2"});
  if (c.model_type == "deepseek_v2") UseV2Defaults(c);
  r.Int("vocab_size", &c.vocab_size);
  r.Int("hidden_size", &c.hidden_size);
  r.Int("intermediate_size", &c.intermediate_size);
  r.Int("moe_intermediate_size", &c.moe_intermediate_size);
  r.Int("num_hidden_layers", &c.num_hidden_layers);
  r.Int("num_attention_heads", &c.num_attention_heads);
  r.Int("q_lora_rank", &c.q_lora_rank, 0);
  r.Int("kv_lora_rank", &c.kv_lora_rank);
  r.Int("qk_nope_head_dim", &c.qk_nope_head_dim);
  r.Int("qk_rope_head_dim", &c.qk_rope_head_dim);
  r.Int("v_head_dim", &c.v_head_dim);
  r.Int("n_routed_experts", &c.n_routed_experts, 0);
  r.Int("n_shared_experts", &c.n_shared_experts, 0);
  r.Int("num_experts_per_tok", &c.num_experts_per_tok, 0);
  r.Int("n_group", &c.n_group, 1);
  r.Int("topk_group", &c.topk_group, 1);
  r.Int("first_k_dense_replace", &c.first_k_dense_replace);
  r.String("scoring_func", &c.scoring_func, {"sigmoid", "softmax"});
  r.String("topk_method", &c.topk_method, {"noaux_tc", "greedy", "group_limited_greedy"});
  r.Float("routed_scaling_factor", &c.routed_scaling_factor);
  r.Bool("norm_topk_prob", &c.norm_topk_prob);
  r.Float("rope_theta", &c.rope_theta);
  r.Int("max_position_embeddings", &c.max_position_embeddings);
  r.Float("rms_norm_eps", &c.rms_norm_eps);
  r.Int("num_nextn_predict_layers", &c.num_nextn_predict_layers, 0);
  r.Float("aux_loss_alpha", &c.aux_loss_alpha);
  r.Require("moe_layer_freq", NumberValue(1));
  r.Require("hidden_act", StringValue("silu"));
  r.Require("tie_word_embeddings", BoolValue(false));
  r.Require("attention_bias", BoolValue(false));

  if (const Value* rs = r.Find("rope_scaling"); rs && rs->kind_case() != Value::kNullValue) {
    if (rs->kind_case() != Value::kStructValue) {
      r.Error("rope_scaling", "expects an object or null");
    } else {
      c.has_rope_scaling = true;
      FieldReader s(rs->struct_value(), file, "rope_scaling.");
      std::string type = "yarn";
      s.String("type", &type, {"yarn"});
      s.String("rope_type", &type, {"yarn"});
      s.Float("factor", &c.rope_factor);
      s.Int("original_max_position_embeddings", &c.original_max_position_embeddings);
      s.Float("beta_fast", &c.beta_fast);
      s.Float("beta_slow", &c.beta_slow);
      s.Float("mscale", &c.mscale);
      c.mscale_all_dim = c.mscale;  // the model.py reading when mscale_all_dim is absent
      s.Float("mscale_all_dim", &c.mscale_all_dim);
      for (Status& e : s.errors()) r.errors().push_back(e);
      if (c.rope_factor < 1)
        r.Error("rope_scaling",
                "has factor " + std::to_string(c.rope_factor) + "; YaRN needs factor >= 1");
      // HF multiplies cos/sin by m(mscale)/m(mscale_all_dim); the graph has no such factor.
      if (c.mscale != c.mscale_all_dim)
        r.Error("rope_scaling", "has mscale != mscale_all_dim; only equal values are supported");
    }
  }
  if (const Value* q = r.Find("quantization_config"); q && q->kind_case() == Value::kStructValue) {
    FieldReader s(q->struct_value(), file, "quantization_config.");
    std::string method = "fp8", fmt = "e4m3";
    s.String("quant_method", &method, {"fp8"});
    s.String("fmt", &fmt, {"e4m3"});
    if (const Value* b = s.Find("weight_block_size"); b != nullptr) {
      const auto& l = b->list_value().values();
      if (l.size() != 2 || l[0].number_value() < 1 || l[1].number_value() < 1) {
        s.Error("weight_block_size", "expects [rows, columns]");
      } else {
        c.block_rows = static_cast<int64_t>(l[0].number_value());
        c.block_cols = static_cast<int64_t>(l[1].number_value());
      }
    }
    for (Status& e : s.errors()) r.errors().push_back(e);
  }

  // Consistency of the layout.
  if (r.errors().empty()) {
    for (auto [key, v] : std::initializer_list<std::pair<const char*, int64_t>>{
             {"vocab_size", c.vocab_size},
             {"hidden_size", c.hidden_size},
             {"num_hidden_layers", c.num_hidden_layers},
             {"num_attention_heads", c.num_attention_heads},
             {"kv_lora_rank", c.kv_lora_rank},
             {"qk_nope_head_dim", c.qk_nope_head_dim},
             {"qk_rope_head_dim", c.qk_rope_head_dim},
             {"v_head_dim", c.v_head_dim},
             {"intermediate_size", c.intermediate_size}}) {
      if (v < 1) r.Error(key, "must be at least 1, got " + std::to_string(v));
    }
    if (c.q_lora_rank < 0) r.Error("q_lora_rank", "must be 0, null or positive");
    if (c.qk_rope_head_dim % 2 != 0) r.Error("qk_rope_head_dim", "must be even (RoPE pairs)");
    if (c.dense_only()) {
      // No experts: every layer is dense, so the MoE repeat is 0.
      c.first_k_dense_replace = c.num_hidden_layers;
      if (c.num_nextn_predict_layers > 0)
        r.Error("num_nextn_predict_layers",
                "needs routed experts (the MTP block is a MoE block); this config has none");
    } else {
      if (c.first_k_dense_replace < 0 || c.first_k_dense_replace > c.num_hidden_layers)
        r.Error("first_k_dense_replace", "must be in [0, num_hidden_layers]");
      if (c.moe_intermediate_size < 1) r.Error("moe_intermediate_size", "must be at least 1");
      if (c.n_shared_experts < 1)
        r.Error("n_shared_experts",
                "must be at least 1 (models without shared experts are "
                "not supported)");
      if (c.num_experts_per_tok < 1 || c.num_experts_per_tok > c.n_routed_experts)
        r.Error("num_experts_per_tok", "must be in [1, n_routed_experts]");
      if (c.n_group < 1 || c.n_routed_experts % c.n_group != 0)
        r.Error("n_group", "must divide n_routed_experts");
      if (c.topk_group < 1 || c.topk_group > c.n_group)
        r.Error("topk_group", "must be in [1, n_group]");
    }
    if (c.num_nextn_predict_layers < 0 || c.num_nextn_predict_layers > 1)
      r.Error("num_nextn_predict_layers", "must be 0 or 1");
  }
  WEIR_RETURN_IF_ERROR(Status::Join(r.errors()));
  return c;
}

StatusOr<Struct> ReadHfConfigJson(const fs::path& path, std::string* file) {
  std::error_code ec;
  fs::path f = fs::is_directory(path, ec) ? path / "config.json" : path;
  if (file != nullptr) *file = f.string();
  return ReadJsonFile(f);
}

StatusOr<HfConfig> ReadHfConfig(const fs::path& path) {
  std::string file;
  WEIR_ASSIGN_OR_RETURN(Struct json, ReadHfConfigJson(path, &file));
  return ParseHfConfig(json, file);
}

std::map<std::string, AttrValue> HfConfig::Attrs(DataType dtype) const {
  std::map<std::string, AttrValue> a;
  auto i = [&](const char* k, int64_t v) { a[k].set_i(v); };
  auto f = [&](const char* k, double v) { a[k].set_f(v); };
  i("vocab_size", vocab_size);
  i("hidden_size", hidden_size);
  i("intermediate_size", intermediate_size);
  i("moe_intermediate_size", moe_intermediate_size);
  i("num_hidden_layers", num_hidden_layers);
  i("first_k_dense_replace", first_k_dense_replace);
  i("num_attention_heads", num_attention_heads);
  i("q_lora_rank", q_lora_rank);
  i("kv_lora_rank", kv_lora_rank);
  i("qk_nope_head_dim", qk_nope_head_dim);
  i("qk_rope_head_dim", qk_rope_head_dim);
  i("v_head_dim", v_head_dim);
  // A dense-only model still instantiates the (zero-times repeated) MoE block's attrs: give it
  // a consistent one-expert router.
  bool dense = dense_only();
  i("n_routed_experts", dense ? 1 : n_routed_experts);
  i("n_shared_experts", dense ? 1 : n_shared_experts);
  i("num_experts_per_tok", dense ? 1 : num_experts_per_tok);
  i("n_group", dense ? 1 : n_group);
  i("topk_group", dense ? 1 : topk_group);
  a["scoring_func"].set_s(scoring_func);
  f("routed_scaling_factor", routed_scaling_factor);
  a["norm_topk_prob"].set_b(norm_topk_prob);
  a["correction_bias"].set_b(!dense && correction_bias());
  f("rope_theta", rope_theta);
  f("rope_factor", has_rope_scaling ? rope_factor : 1.0);
  i("original_max_position_embeddings", original_max_position_embeddings);
  f("beta_fast", beta_fast);
  f("beta_slow", beta_slow);
  f("mscale_all_dim", has_rope_scaling ? mscale_all_dim : 1.0);
  f("rms_norm_eps", rms_norm_eps);
  i("num_nextn_predict_layers", num_nextn_predict_layers);
  f("aux_loss_alpha", aux_loss_alpha);
  a["query"].set_s(q_lora_rank > 0 ? "MlaQueryLoRA" : "MlaQueryDirect");
  a["T"].set_type(dtype);
  return a;
}

std::string AttrsToJson(const std::map<std::string, AttrValue>& attrs) {
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : attrs) {
    out += std::string(first ? "" : ", ") + JsonQuote(k) + ": ";
    first = false;
    switch (v.value_case()) {
      case AttrValue::kI:
        out += std::to_string(v.i());
        break;
      case AttrValue::kF:
        out += JsonNumber(v.f());
        break;
      case AttrValue::kB:
        out += v.b() ? "true" : "false";
        break;
      case AttrValue::kS:
        out += JsonQuote(v.s());
        break;
      default:
        out += JsonQuote(FormatAttrValue(v));
    }
  }
  return out + "}";
}

std::string AttrsToString(const std::map<std::string, AttrValue>& attrs) {
  std::string out;
  for (const auto& [k, v] : attrs) {
    std::string text = FormatAttrValue(v);
    // A float that prints as an integer would be read back as an int.
    if (v.value_case() == AttrValue::kF && text.find_first_of(".eEn") == std::string::npos)
      text += ".0";
    out += (out.empty() ? "" : " ") + k + "=" + text;
  }
  return out;
}

}  // namespace weir::deepseek
