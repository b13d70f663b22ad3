#include "hf_weights.h"

#include <cstring>
#include <set>

#include "weir/json.h"
#include "weir/safetensors.h"

namespace weir::deepseek {

namespace fs = std::filesystem;

namespace {

// Errors past this many are counted, not listed: a wrong config would otherwise list thousands.
constexpr size_t kMaxListedErrors = 12;

// Appends the parameters of one decoder block: HF prefix "model.layers.<i>.", weir prefix
// "dense_layers.<i>." (or moe_layers, mtp.0.block).
void AddBlock(const HfConfig& c, const std::string& hf, const std::string& w, bool moe,
              std::vector<HfParam>& out) {
  const int64_t d = c.hidden_size, H = c.num_attention_heads, dn = c.qk_nope_head_dim,
                dr = c.qk_rope_head_dim, dv = c.v_head_dim, r = c.kv_lora_rank, ql = c.q_lora_rank;
  auto add = [&](const std::string& h, const std::string& name, Shape shape) {
    out.push_back({w + name, std::move(shape), {hf + h}, false});
  };
  add("input_layernorm.weight", "attn_norm.weight", {d});
  if (ql > 0) {
    add("self_attn.q_a_proj.weight", "attn.q.wq_a.weight", {ql, d});
    add("self_attn.q_a_layernorm.weight", "attn.q.q_norm.weight", {ql});
    add("self_attn.q_b_proj.weight", "attn.q.wq_b.weight", {H * (dn + dr), ql});
  } else {
    add("self_attn.q_proj.weight", "attn.q.wq.weight", {H * (dn + dr), d});
  }
  add("self_attn.kv_a_proj_with_mqa.weight", "attn.wkv_a.weight", {r + dr, d});
  add("self_attn.kv_a_layernorm.weight", "attn.kv_norm.weight", {r});
  add("self_attn.kv_b_proj.weight", "attn.wkv_b.weight", {H * (dn + dv), r});
  add("self_attn.o_proj.weight", "attn.wo.weight", {d, H * dv});
  add("post_attention_layernorm.weight", "ffn_norm.weight", {d});
  if (!moe) {
    const int64_t I = c.intermediate_size;
    add("mlp.gate_proj.weight", "ffn.w1.weight", {I, d});
    add("mlp.up_proj.weight", "ffn.w3.weight", {I, d});
    add("mlp.down_proj.weight", "ffn.w2.weight", {d, I});
    return;
  }
  const int64_t E = c.n_routed_experts, I = c.moe_intermediate_size,
                S = c.n_shared_experts * c.moe_intermediate_size;
  add("mlp.gate.weight", "ffn.gate.weight", {E, d});
  if (c.correction_bias()) {
    out.push_back({w + "ffn.router.bias", {E}, {hf + "mlp.gate.e_score_correction_bias"}, true});
  }
  for (auto [proj, name] : {std::pair{"gate_proj", "w1"}, {"up_proj", "w3"}, {"down_proj", "w2"}}) {
    HfParam p{w + "ffn.experts." + name, {}, {}, false};
    p.shape = std::string(name) == "w2" ? Shape{E, d, I} : Shape{E, I, d};
    for (int64_t j = 0; j < E; ++j)
      p.hf.push_back(hf + "mlp.experts." + std::to_string(j) + "." + proj + ".weight");
    out.push_back(std::move(p));
  }
  add("mlp.shared_experts.gate_proj.weight", "ffn.shared_experts.w1.weight", {S, d});
  add("mlp.shared_experts.up_proj.weight", "ffn.shared_experts.w3.weight", {S, d});
  add("mlp.shared_experts.down_proj.weight", "ffn.shared_experts.w2.weight", {d, S});
}

std::string LayerPrefix(int64_t i) { return "model.layers." + std::to_string(i) + "."; }

// Where each HF tensor lives: the open files by path and a tensor -> path map.
struct HfFiles {
  std::map<std::string, std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, std::string> by_name;
  std::string where;  // model.safetensors or the index file, for "missing" errors

  StatusOr<Tensor> Get(const std::string& name) const {
    return files.at(by_name.at(name))->Get(name);
  }
};

StatusOr<HfFiles> OpenHfFiles(const fs::path& dir) {
  HfFiles out;
  fs::path single = dir / "model.safetensors";
  fs::path index = dir / "model.safetensors.index.json";
  std::error_code ec;
  if (fs::exists(single, ec)) {
    out.where = single.string();
    WEIR_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single));
    for (const std::string& name : file->names()) out.by_name[name] = single.string();
    out.files[single.string()] = std::move(file);
    return out;
  }
  if (!fs::exists(index, ec))
    return NotFound("no model.safetensors or model.safetensors.index.json in " + dir.string());
  out.where = index.string();
  WEIR_ASSIGN_OR_RETURN(auto parsed, ReadJsonFile(index));
  auto map = parsed.fields().find("weight_map");
  if (map == parsed.fields().end() || !map->second.has_struct_value())
    return InvalidArgument(index.string() + ": no weight_map object");
  for (const auto& [tensor, file] : map->second.struct_value().fields()) {
    const std::string& f = file.string_value();
    if (f.empty() || f.find('/') != std::string::npos)
      return InvalidArgument(index.string() + ": tensor '" + tensor + "' maps to '" + f +
                             "', not a file beside the index");
    std::string path = (dir / f).string();
    if (!out.files.count(path)) {
      auto shard = SafetensorsFile::Open(path);
      if (!shard.ok()) {
        Status s = shard.status();
        return s.Prepend(index.string() + ": ");
      }
      out.files[path] = std::move(*shard);
    }
    if (!out.files[path]->Has(tensor))
      return InvalidArgument(index.string() + ": tensor '" + tensor + "' is not in " + path);
    out.by_name[tensor] = path;
  }
  // Tensors in a shard that the index does not list are still seen (and reported unexpected).
  for (const auto& [path, file] : out.files)
    for (const std::string& name : file->names()) out.by_name.emplace(name, path);
  return out;
}

}  // namespace

std::vector<HfParam> HfLayout(const HfConfig& c) {
  std::vector<HfParam> out;
  const int64_t d = c.hidden_size, V = c.vocab_size;
  out.push_back({"embed.weight", {V, d}, {"model.embed_tokens.weight"}, false});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    bool moe = i >= c.first_k_dense_replace;
    std::string w = moe ? "moe_layers." + std::to_string(i - c.first_k_dense_replace) + "."
                        : "dense_layers." + std::to_string(i) + ".";
    AddBlock(c, LayerPrefix(i), w, moe, out);
  }
  out.push_back({"norm.weight", {d}, {"model.norm.weight"}, false});
  out.push_back({"head.weight", {V, d}, {"lm_head.weight"}, false});
  if (c.num_nextn_predict_layers > 0) {
    std::string hf = LayerPrefix(c.num_hidden_layers);
    out.push_back({"mtp.0.enorm.weight", {d}, {hf + "enorm.weight"}, false});
    out.push_back({"mtp.0.hnorm.weight", {d}, {hf + "hnorm.weight"}, false});
    out.push_back({"mtp.0.eh_proj.weight", {d, 2 * d}, {hf + "eh_proj.weight"}, false});
    AddBlock(c, hf, "mtp.0.block.", true, out);
    out.push_back({"mtp.0.norm.weight", {d}, {hf + "shared_head.norm.weight"}, false});
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> HfDuplicates(const HfConfig& c) {
  if (c.num_nextn_predict_layers == 0) return {};
  std::string hf = LayerPrefix(c.num_hidden_layers);
  return {{hf + "embed_tokens.weight", "embed.weight"},
          {hf + "shared_head.head.weight", "head.weight"}};
}

StatusOr<std::map<std::string, Tensor>> ImportHfWeights(const fs::path& dir, const HfConfig& c) {
  WEIR_ASSIGN_OR_RETURN(HfFiles files, OpenHfFiles(dir));
  std::vector<std::string> errors;
  std::set<std::string> used;
  auto file_of = [&](const std::string& name) { return files.by_name.at(name); };

  // One HF tensor as f32 of `shape`, or an empty tensor after recording the problem.
  auto load = [&](const std::string& name, const Shape& shape) -> Tensor {
    auto it = files.by_name.find(name);
    if (it == files.by_name.end()) {
      errors.push_back(files.where + ": missing tensor '" + name + "'");
      return Tensor();
    }
    used.insert(name);
    auto t = files.Get(name);
    if (!t.ok()) {
      errors.push_back(t.status().message());
      return Tensor();
    }
    if (t->shape() != shape) {
      errors.push_back(file_of(name) + ": tensor '" + name + "' has shape " +
                       ShapeString(t->shape()) + ", config.json needs " + ShapeString(shape));
      return Tensor();
    }
    switch (t->dtype()) {
      case DT_F32:
      case DT_BF16:
      case DT_F16:
      case DT_F64:
        return t->To(DT_F32);
      case DT_F8E4M3:
        break;
      default:
        errors.push_back(file_of(name) + ": tensor '" + name + "' has dtype " +
                         SafetensorsDtypeName(t->dtype()) +
                         "; supported: F32, BF16, F16, F64, F8_E4M3");
        return Tensor();
    }
    // FP8 block quantization: W = W_fp8 * scale_inv[row / block_rows, column / block_cols].
    std::string scale_name = name + "_scale_inv";
    if (t->rank() != 2) {
      errors.push_back(file_of(name) + ": F8_E4M3 tensor '" + name + "' is not a matrix");
      return Tensor();
    }
    const int64_t rows = t->dim(0), cols = t->dim(1);
    Shape grid = {(rows + c.block_rows - 1) / c.block_rows,
                  (cols + c.block_cols - 1) / c.block_cols};
    auto sit = files.by_name.find(scale_name);
    if (sit == files.by_name.end()) {
      errors.push_back(files.where + ": missing tensor '" + scale_name +
                       "' (the scale of F8_E4M3 '" + name + "')");
      return Tensor();
    }
    used.insert(scale_name);
    auto scale = files.Get(scale_name);
    if (!scale.ok() || scale->shape() != grid || !IsFloating(scale->dtype())) {
      errors.push_back(file_of(scale_name) + ": tensor '" + scale_name + "' must be a float " +
                       ShapeString(grid) + " block grid" +
                       (scale.ok() ? ", got " + ShapeString(scale->shape()) : ""));
      return Tensor();
    }
    Tensor w = t->To(DT_F32);
    Tensor s = scale->To(DT_F32);
    float* wp = w.data<float>();
    const float* sp = s.data<float>();
    for (int64_t i = 0; i < rows; ++i) {
      const float* srow = sp + (i / c.block_rows) * grid[1];
      for (int64_t j = 0; j < cols; ++j) wp[i * cols + j] *= srow[j / c.block_cols];
    }
    return w;
  };

  std::map<std::string, Tensor> out;
  for (const HfParam& p : HfLayout(c)) {
    if (p.hf.size() == 1) {
      Tensor t = load(p.hf[0], p.shape);
      if (t.defined() && t.numel() > 0) out[p.weir] = t;
      continue;
    }
    // Experts stacked on axis 0.
    Shape one(p.shape.begin() + 1, p.shape.end());
    Tensor stacked = Tensor::Empty(DT_F32, p.shape);
    const int64_t n = NumElements(one);
    bool ok = true;
    for (size_t j = 0; j < p.hf.size(); ++j) {
      Tensor t = load(p.hf[j], one);
      if (!t.defined() || t.numel() != n) {
        ok = false;
        continue;
      }
      std::memcpy(stacked.data<float>() + j * n, t.data<float>(), n * sizeof(float));
    }
    if (ok) out[p.weir] = stacked;
  }
  for (const auto& [hf, weir] : HfDuplicates(c)) {
    // A copy of the main embedding or head: its shape is checked, its values are not used.
    if (files.by_name.count(hf)) {
      auto t = files.Get(hf);
      Shape want = {c.vocab_size, c.hidden_size};
      if (t.ok() && t->shape() != want)
        errors.push_back(file_of(hf) + ": tensor '" + hf + "' has shape " +
                         ShapeString(t->shape()) + ", config.json needs " + ShapeString(want));
      used.insert(hf);
    }
  }
  for (const auto& [name, file] : files.by_name) {
    if (used.count(name)) continue;
    errors.push_back(file + ": unexpected tensor '" + name +
                     "' (not part of the model config.json describes)");
  }
  if (!errors.empty()) {
    std::string message = dir.string() + " does not match its config.json:";
    for (size_t i = 0; i < errors.size() && i < kMaxListedErrors; ++i)
      message += "\n  " + errors[i];
    if (errors.size() > kMaxListedErrors)
      message += "\n  ... and " + std::to_string(errors.size() - kMaxListedErrors) + " more";
    return InvalidArgument(message);
  }
  return out;
}

Status ExportHfWeights(const std::map<std::string, Tensor>& params, const HfConfig& c,
                       const fs::path& dir, const HfExportOptions& options,
                       const std::string& source) {
  if (options.dtype != DT_F32 && options.dtype != DT_BF16)
    return InvalidArgument("HF export writes f32 or bf16, not " +
                           std::string(DataTypeName(options.dtype)));
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::vector<std::string> errors;
  std::set<std::string> used;
  std::map<std::string, std::string> duplicate_after;  // weir name -> HF copy written after it
  auto convert = [&](const Tensor& t, bool always_f32) {
    return t.To(always_f32 ? DT_F32 : options.dtype);
  };
  std::vector<HfParam> layout = HfLayout(c);
  auto duplicates = HfDuplicates(c);
  for (const HfParam& p : layout) {
    auto it = params.find(p.weir);
    if (it == params.end()) {
      errors.push_back(source + ": missing tensor '" + p.weir + "'");
      continue;
    }
    used.insert(p.weir);
    const Tensor& t = it->second;
    if (t.shape() != p.shape) {
      errors.push_back(source + ": tensor '" + p.weir + "' has shape " + ShapeString(t.shape()) +
                       ", the config needs " + ShapeString(p.shape));
      continue;
    }
    if (p.hf.size() == 1) {
      tensors.emplace_back(p.hf[0], convert(t, p.always_f32));
    } else {
      Shape one(p.shape.begin() + 1, p.shape.end());
      for (size_t j = 0; j < p.hf.size(); ++j) {
        Tensor expert =
            convert(t.Slice(0, static_cast<int64_t>(j), static_cast<int64_t>(j) + 1), p.always_f32);
        auto flat = expert.Reshape(one);
        if (!flat.ok()) return flat.status();
        tensors.emplace_back(p.hf[j], *flat);
      }
    }
    // The MTP layer's copies of the embedding and the head go where HF puts them: the embedding
    // first in the MTP layer, the head last.
    if (p.weir == "mtp.0.enorm.weight" || p.weir == "mtp.0.norm.weight") {
      const auto& [hf, weir] = duplicates[p.weir == "mtp.0.enorm.weight" ? 0 : 1];
      auto src = params.find(weir);
      if (src != params.end() && src->second.shape() == Shape{c.vocab_size, c.hidden_size}) {
        auto at = p.weir == "mtp.0.enorm.weight" ? tensors.end() - 1 : tensors.end();
        tensors.insert(at, {hf, convert(src->second, false)});
      }
    }
  }
  for (const auto& [name, t] : params)
    if (!used.count(name))
      errors.push_back(source + ": unexpected tensor '" + name +
                       "' (no place for it in the config)");
  if (!errors.empty()) {
    std::string message = source + " does not match the config:";
    for (size_t i = 0; i < errors.size() && i < kMaxListedErrors; ++i)
      message += "\n  " + errors[i];
    if (errors.size() > kMaxListedErrors)
      message += "\n  ... and " + std::to_string(errors.size() - kMaxListedErrors) + " more";
    return InvalidArgument(message);
  }
  return WriteSafetensorsSharded(dir, "model", tensors, options.max_shard_bytes,
                                 {{"format", "pt"}});
}

}  // namespace weir::deepseek
