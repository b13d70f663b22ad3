// A training step of a ~1B-parameter DeepSeek-style MoE on cuda:0 (tools/gpu-check): the
// DeepseekV3 function of graphs/models/deepseek_v3.pbtxt at a small size (MLA, 32 fine-grained
// routed experts of which 4 per token plus a shared one, MTP), bf16 compute over f32 masters
// that stay on the GPU. Times forward and backward (the gradients stay on the GPU; the optimizer
// step is not included) and prints tokens/s and the model FLOPs utilization against the H200's
// dense bf16 peak, as one JSON object per line.
//   weir_bench_cuda_train [batch] [time] [steps]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "weir/device.h"
#include "weir/graph.h"
#include "weir/plugin_loader.h"
#include "weir/runtime/program.h"

namespace weir {
namespace {

constexpr double kH200DenseBf16 = 989e12;

std::map<std::string, AttrValue> ModelAttrs() {
  std::map<std::string, AttrValue> a;
  auto i = [&](const char* k, int64_t v) { a[k].set_i(v); };
  i("vocab_size", 32000);
  i("hidden_size", 1024);
  i("intermediate_size", 2816);
  i("moe_intermediate_size", 704);
  i("num_hidden_layers", 12);
  i("first_k_dense_replace", 1);
  i("num_attention_heads", 16);
  i("q_lora_rank", 384);
  i("kv_lora_rank", 256);
  i("qk_nope_head_dim", 64);
  i("qk_rope_head_dim", 32);
  i("v_head_dim", 64);
  i("n_routed_experts", 32);
  i("n_shared_experts", 1);
  i("num_experts_per_tok", 4);
  i("n_group", 4);
  i("topk_group", 2);
  i("num_nextn_predict_layers", 1);
  i("original_max_position_embeddings", 4096);
  a["rope_factor"].set_f(1.0);
  a["init_std"].set_f(0.02);
  a["T"].set_type(DT_BF16);
  a["loss_dtype"].set_type(DT_F32);
  return a;
}

Status Run(int64_t batch, int64_t time, int steps) {
  auto device = FindDeviceRuntime("cuda:0");
  if (!device.ok()) {
    std::printf("weir_bench_cuda_train: no GPU (%s)\n", device.status().ToString().c_str());
    return Status();
  }
  OpRegistry ops;
  PluginLoader loader(&ops);
  WEIR_RETURN_IF_ERROR(loader.LoadDefaults());
  WEIR_ASSIGN_OR_RETURN(Graph graph, LoadGraph(WEIR_SOURCE_DIR "/graphs/models/deepseek_v3.pbtxt"));
  ProgramOptions options;
  options.device = "cuda:0";
  options.loss = "loss";
  options.outputs_on_device = true;
  std::vector<TensorType> types = {{DT_I64, {batch, time}}, {DT_I64, {batch, time}}};
  WEIR_ASSIGN_OR_RETURN(auto program,
                        Program::Build(graph, "DeepseekV3", ModelAttrs(), types, ops, options));

  // Masters in f32 on the GPU: the program converts them to bf16 there.
  ParamStore params;
  params.Initialize(program->params(), 1);
  DeviceRuntime* gpu = *device;
  WEIR_ASSIGN_OR_RETURN(StreamId stream, gpu->AcquireStream());
  double total_params = 0;
  for (auto& [name, t] : params.mutable_values()) {
    total_params += static_cast<double>(t.numel());
    WEIR_ASSIGN_OR_RETURN(auto storage, gpu->Allocate(t.nbytes(), stream));
    WEIR_RETURN_IF_ERROR(gpu->CopyToDevice(storage->data(), t.raw_data(), t.nbytes(), stream));
    t = Tensor::FromStorage(storage, t.dtype(), t.shape());
  }
  WEIR_RETURN_IF_ERROR(gpu->Synchronize(stream));
  gpu->ReleaseStream(stream);
  // Parameters one token uses: routed experts count their share (K of E).
  ProgramCost cost = program->Cost();
  double active_params = 0;
  for (const ParamInfo& p : program->params())
    active_params += static_cast<double>(NumElements(p.type.shape)) * cost.active_share[p.name];

  std::vector<double> ids(static_cast<size_t>(batch * time));
  for (size_t k = 0; k < ids.size(); ++k) ids[k] = static_cast<double>((k * 7919) % 32000);
  std::vector<Tensor> inputs = {Tensor::FromValues(DT_I64, {batch, time}, ids),
                                Tensor::FromValues(DT_I64, {batch, time}, ids)};
  auto step = [&]() -> Status {
    auto run = program->Start(params);
    WEIR_RETURN_IF_ERROR(run->Forward(inputs));
    return run->Backward({}, /*weights=*/true);
  };
  for (int w = 0; w < 2; ++w) WEIR_RETURN_IF_ERROR(step());  // warm-up: allocator, cuBLASLt plans
  auto start = std::chrono::steady_clock::now();
  for (int s = 0; s < steps; ++s) WEIR_RETURN_IF_ERROR(step());
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / steps;
  double tokens_per_s = static_cast<double>(batch * time) / seconds;
  // 6 FLOPs per active parameter per token (forward 2, backward 4), attention's quadratic part
  // left out, as MFU is usually counted.
  double mfu = 6 * active_params * tokens_per_s / kH200DenseBf16;
  std::printf(
      "{\"name\": \"train_step_moe_1b\", \"params\": %.4g, \"active_params\": %.4g, "
      "\"tokens\": %lld, \"step_ms\": %.2f, \"tokens_per_s\": %.1f, \"mfu\": %.4f}\n",
      total_params, active_params, static_cast<long long>(batch * time), seconds * 1e3,
      tokens_per_s, mfu);
  return Status();
}

}  // namespace
}  // namespace weir

int main(int argc, char** argv) {
  int64_t batch = argc > 1 ? std::atoll(argv[1]) : 8;
  int64_t time = argc > 2 ? std::atoll(argv[2]) : 2048;
  int steps = argc > 3 ? std::atoi(argv[3]) : 5;
  weir::Status s = weir::Run(batch, time, steps);
  if (!s.ok()) {
    std::fprintf(stderr, "weir_bench_cuda_train: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
