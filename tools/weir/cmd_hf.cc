// weir hf: Hugging Face DeepSeek checkpoints to weir checkpoint folders and back, through the
// DeepSeek converter (plugins/deepseek).
#include <filesystem>
#include <iostream>

#include "args.h"
#include "commands.h"
#include "hf_config.h"
#include "hf_weights.h"
#include "weir/atomic_file.h"
#include "weir/json.h"
#include "weir/safetensors.h"

namespace weir::cli {

namespace fs = std::filesystem;

namespace {

constexpr char kHelp[] = R"(usage: weir hf import HF_DIR --out CKPT_DIR [--max-shard-bytes N]
       weir hf export CKPT_DIR --out HF_DIR [--config FILE|DIR] [--dtype f32|bf16]
                      [--max-shard-bytes N]

import  reads a Hugging Face DeepSeek-V2/V3 checkpoint (config.json, model.safetensors or a
        sharded index; F32, BF16 or block-FP8 weights) and writes a weir checkpoint folder:
        model.safetensors with weir parameter names in f32 (the `model` resource's names, as
        training checkpoints hold them) and model.json {"function", "attrs", "attr_string",
        "hf_config"}: the DeepseekV3 attrs for graphs/models/deepseek_v3.pbtxt, the same as a
        model resource's attrs text, and the config.json it came from.
export  writes a weir checkpoint folder (CKPT_DIR/model.safetensors or its index, weir names)
        as a Hugging Face one: config.json and model.safetensors with HF names, the MTP layer's
        embed_tokens and shared_head.head written as copies of the main ones.
        The config is --config (a config.json or a folder holding one), else the hf_config in
        CKPT_DIR/model.json. Its quantization_config is dropped and torch_dtype set to --dtype.

Options:
  --out DIR              the folder to write (created)
  --config FILE|DIR      export: the HF config.json that describes the model
  --dtype f32|bf16       export: the stored dtype (default f32; bf16 rounds to nearest even;
                         e_score_correction_bias stays F32 as in HF checkpoints)
  --max-shard-bytes N    shard model.safetensors past N bytes (default 5368709120), with a
                         model.safetensors.index.json
)";

Status Import(const fs::path& hf, const fs::path& out, int64_t max_shard) {
  std::string config_file;
  WEIR_ASSIGN_OR_RETURN(auto json, deepseek::ReadHfConfigJson(hf, &config_file));
  WEIR_ASSIGN_OR_RETURN(deepseek::HfConfig config, deepseek::ParseHfConfig(json, config_file));
  WEIR_ASSIGN_OR_RETURN(auto weights, deepseek::ImportHfWeights(hf, config));
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) return InvalidArgument("cannot create " + out.string() + ": " + ec.message());
  std::vector<std::pair<std::string, Tensor>> tensors(weights.begin(), weights.end());
  WEIR_RETURN_IF_ERROR(WriteSafetensorsSharded(out, "model", tensors, max_shard,
                                               {{"format", "pt"}, {"weir_model", "DeepseekV3"}}));
  auto attrs = config.Attrs(DT_F32);
  google::protobuf::Value hf_config;
  *hf_config.mutable_struct_value() = json;
  std::string model =
      "{\n  \"function\": \"DeepseekV3\",\n  \"attrs\": " + deepseek::AttrsToJson(attrs) +
      ",\n  \"attr_string\": " + JsonQuote(deepseek::AttrsToString(attrs)) +
      ",\n  \"hf_config\": " + JsonValueText(hf_config) + "\n}\n";
  return WriteFileAtomically(out / "model.json", model);
}

Status Export(const fs::path& ckpt, const fs::path& out,
              const std::optional<std::string>& config_flag, DataType dtype, int64_t max_shard) {
  google::protobuf::Struct json;
  std::string config_file;
  if (config_flag) {
    WEIR_ASSIGN_OR_RETURN(json, deepseek::ReadHfConfigJson(*config_flag, &config_file));
  } else {
    config_file = (ckpt / "model.json").string();
    WEIR_ASSIGN_OR_RETURN(auto model, ReadJsonFile(ckpt / "model.json"));
    auto it = model.fields().find("hf_config");
    if (it == model.fields().end() || !it->second.has_struct_value())
      return InvalidArgument(config_file + " has no hf_config; pass --config config.json");
    json = it->second.struct_value();
  }
  WEIR_ASSIGN_OR_RETURN(deepseek::HfConfig config, deepseek::ParseHfConfig(json, config_file));
  WEIR_ASSIGN_OR_RETURN(auto params, ReadSafetensorsSharded(ckpt, "model"));
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) return InvalidArgument("cannot create " + out.string() + ": " + ec.message());
  deepseek::HfExportOptions options;
  options.dtype = dtype;
  options.max_shard_bytes = max_shard;
  std::error_code ignored;
  fs::path source = fs::exists(ckpt / "model.safetensors", ignored)
                        ? ckpt / "model.safetensors"
                        : ckpt / "model.safetensors.index.json";
  WEIR_RETURN_IF_ERROR(deepseek::ExportHfWeights(params, config, out, options, source.string()));
  // The weights are now plain f32/bf16: the FP8 quantization no longer applies.
  json.mutable_fields()->erase("quantization_config");
  (*json.mutable_fields())["torch_dtype"].set_string_value(dtype == DT_BF16 ? "bfloat16"
                                                                            : "float32");
  google::protobuf::Value value;
  *value.mutable_struct_value() = json;
  return WriteFileAtomically(out / "config.json", JsonValueText(value) + "\n");
}

}  // namespace

int HfCommand(const std::vector<std::string>& argv) {
  Args args;
  if (auto exit = ParseCommand("hf", argv,
                               {{"out", true, false},
                                {"config", true, false},
                                {"dtype", true, false},
                                {"max-shard-bytes", true, false}},
                               kHelp, 2, 2, &args))
    return *exit;
  const std::string& action = args.positional[0];
  if (action != "import" && action != "export") {
    std::cerr << "weir hf: expected 'import' or 'export', got '" << action << "'\n";
    return 2;
  }
  if (!args.Has("out")) {
    std::cerr << "weir hf " << action << ": --out DIR is required\n";
    return 2;
  }
  int64_t max_shard = int64_t{5} << 30;
  if (auto m = args.Get("max-shard-bytes")) {
    char* end = nullptr;
    long long v = std::strtoll(m->c_str(), &end, 10);
    if (m->empty() || *end != '\0' || v < 1) {
      std::cerr << "weir hf: --max-shard-bytes expects a positive integer, got '" << *m << "'\n";
      return 2;
    }
    max_shard = v;
  }
  Status s;
  if (action == "import") {
    if (args.Has("config") || args.Has("dtype")) {
      std::cerr << "weir hf import: --config and --dtype are export options\n";
      return 2;
    }
    s = Import(args.positional[1], *args.Get("out"), max_shard);
  } else {
    std::string dtype = args.Get("dtype").value_or("f32");
    if (dtype != "f32" && dtype != "bf16") {
      std::cerr << "weir hf export: --dtype expects f32 or bf16, got '" << dtype << "'\n";
      return 2;
    }
    s = Export(args.positional[1], *args.Get("out"), args.Get("config"),
               dtype == "bf16" ? DT_BF16 : DT_F32, max_shard);
  }
  if (!s.ok()) {
    std::cerr << "weir hf " << action << ": " << s.ToString() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace weir::cli
