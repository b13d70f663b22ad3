#include "weir/runtime/lora.h"

#include "weir/attr.h"
#include "weir/gemm.h"
#include "weir/json.h"

namespace weir {
namespace {

constexpr std::string_view kA = ".lora_a", kB = ".lora_b";

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

void LoraConfig::AddTo(ProgramOptions& options) const {
  if (!enabled()) return;
  NodeRewrite rewrite;
  rewrite.from_op = "nn.Linear";
  rewrite.to_op = "nn.LoRALinear";
  rewrite.attrs["lora_rank"] = ToAttrValue(rank);
  rewrite.attrs["lora_alpha"] = ToAttrValue(alpha);
  rewrite.attrs["lora_dropout"] = ToAttrValue(dropout);
  rewrite.attrs["seed"] = ToAttrValue(seed);
  for (const std::string& target : targets) {
    rewrite.pattern = target;
    options.rewrites.push_back(rewrite);
  }
  options.trainable = {"lora_a", "lora_b"};
}

std::string LoraConfig::ConfigJson() const {
  std::string modules;
  for (const std::string& t : targets) modules += (modules.empty() ? "" : ", ") + JsonQuote(t);
  return "{\"peft_type\": \"LORA\", \"r\": " + std::to_string(rank) +
         ", \"lora_alpha\": " + JsonNumber(alpha) + ", \"lora_dropout\": " + JsonNumber(dropout) +
         ", \"target_modules\": [" + modules + "], \"bias\": \"none\"}\n";
}

StatusOr<LoraConfig> ReadLoraConfig(const std::filesystem::path& dir) {
  std::filesystem::path path = dir / kAdapterConfigFile;
  WEIR_ASSIGN_OR_RETURN(auto json, ReadJsonFile(path));
  auto number = [&](const char* key) -> StatusOr<double> {
    auto it = json.fields().find(key);
    if (it == json.fields().end() || !it->second.has_number_value())
      return InvalidArgument(path.string() + " has no number '" + key + "'");
    return it->second.number_value();
  };
  LoraConfig config;
  WEIR_ASSIGN_OR_RETURN(config.alpha, number("lora_alpha"));
  WEIR_ASSIGN_OR_RETURN(double rank, number("r"));
  config.rank = static_cast<int64_t>(rank);
  if (auto dropout = number("lora_dropout"); dropout.ok()) config.dropout = *dropout;
  if (auto it = json.fields().find("target_modules"); it != json.fields().end())
    for (const auto& v : it->second.list_value().values())
      config.targets.push_back(v.string_value());
  return config;
}

bool IsLoraParam(const std::string& name) { return EndsWith(name, kA) || EndsWith(name, kB); }

StatusOr<std::map<std::string, Tensor>> MergeLora(const std::map<std::string, Tensor>& params,
                                                  double alpha) {
  std::map<std::string, Tensor> merged;
  for (const auto& [name, t] : params)
    if (!IsLoraParam(name)) merged[name] = t;
  for (const auto& [name, a] : params) {
    if (!EndsWith(name, kA)) continue;
    std::string node = name.substr(0, name.size() - kA.size());
    auto b = params.find(node + std::string(kB));
    auto w = merged.find(node + ".weight");
    if (b == params.end())
      return InvalidArgument("adapter '" + name + "' has no " + node + ".lora_b");
    if (w == merged.end())
      return InvalidArgument("adapter '" + name + "' has no base " + node + ".weight");
    const Shape &sa = a.shape(), &sb = b->second.shape(), &sw = w->second.shape();
    if (sa.size() != 2 || sb.size() != 2 || sw.size() != 2 || sb[1] != sa[0] || sw[0] != sb[0] ||
        sw[1] != sa[1]) {
      return InvalidArgument("adapter of '" + node + "': lora_a " + ShapeString(sa) +
                             " and lora_b " + ShapeString(sb) + " do not fit its weight " +
                             ShapeString(sw));
    }
    // In f32 whatever the stored dtype: B·A is the product of two small matrices.
    Tensor delta = Tensor::Zeros(DT_F32, sw);
    WEIR_RETURN_IF_ERROR(Gemm(b->second.To(DT_F32), false, a.To(DT_F32), false, delta));
    Tensor out = w->second.To(DT_F32);
    float* o = out.data<float>();
    const float* d = delta.data<float>();
    float scale = static_cast<float>(alpha / static_cast<double>(sa[0]));
    for (int64_t i = 0; i < out.numel(); ++i) o[i] += scale * d[i];
    w->second = out.To(w->second.dtype());
  }
  for (const auto& [name, b] : params) {
    if (!EndsWith(name, kB)) continue;
    std::string node = name.substr(0, name.size() - kB.size());
    if (!params.count(node + std::string(kA)))
      return InvalidArgument("adapter '" + name + "' has no " + node + ".lora_a");
  }
  return merged;
}

}  // namespace weir
