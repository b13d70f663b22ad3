// train.Step: trains a model resource on the batches it receives — forward, backward, gradient
// accumulation, clipping by global norm, an optimizer step (any op shaped like optim.AdamW), a
// learning-rate schedule, evaluation on a held-out stream, metrics and atomic checkpoints that
// `weir run --resume` continues from exactly.
#include <glog/logging.h>
#include <tbb/blocked_range.h>
#include <tbb/info.h>
#include <tbb/parallel_reduce.h>
#include <tbb/task_arena.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "step/data_parallel.h"
#include "step/pipeline.h"
#include "step/schedule.h"
#include "weir/atomic_file.h"
#include "weir/checkpoints.h"
#include "weir/dispatch.h"
#include "weir/json.h"
#include "weir/runtime/model.h"
#include "weir/runtime/trace.h"
#include "weir/runtime/world.h"
#include "weir/safetensors.h"

namespace weir::train {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

class TrainStep : public StreamKernel {
 public:
  TrainStep(const NodeContext& ctx, Model* model, const OpEntry* optimizer, Attrs optimizer_attrs)
      : ctx_(ctx), model_(model), optimizer_(optimizer), opt_attrs_(std::move(optimizer_attrs)) {
    inputs_ = ctx.StringList("inputs");
    loss_ = ctx.String("loss");
    function_ = ctx.String("function");
    steps_ = ctx.Int("steps");
    accumulate_ = ctx.Int("accumulate");
    clip_ = ctx.Float("grad_clip");
    eval_every_ = ctx.Int("eval_every");
    eval_batches_ = ctx.Int("eval_batches");
    checkpoint_every_ = ctx.Int("checkpoint_every");
    keep_ = ctx.Int("keep_checkpoints");
    schedule_.kind = ctx.String("schedule");
    schedule_.lr = ctx.Float("lr");
    schedule_.warmup = ctx.Int("warmup_steps");
    schedule_.total = steps_;
    schedule_.min_ratio = ctx.Float("min_lr_ratio");
    schedule_.decay_fraction = ctx.Float("decay_fraction");
    skip_nonfinite_ = ctx.String("on_nonfinite") == "skip";
    ranks_ = static_cast<int>(ctx.Int("data_parallel"));
    zero_ = ctx.Int("zero_stage") == 1;
    pipeline_ranks_ = static_cast<int>(ctx.Int("pipeline_parallel"));
    micro_batches_ = static_cast<int>(ctx.Int("micro_batches"));
    expert_ranks_ = static_cast<int>(ctx.Int("expert_parallel"));
    stage_starts_ = ctx.StringList("stage_starts");
    for (int o = 1; o < optimizer_->def.output_size(); ++o)
      state_names_.push_back(optimizer_->def.output(o).name());
  }

  // Data parallelism across the launcher's processes (the world communicator) or, in one
  // process, across `data_parallel` virtual ranks.
  Status SetUpRanks() {
    if (expert_ranks_ > 1) {
      if (expert_ranks_ != ranks_) {
        return ctx_.Error("expert_parallel=" + std::to_string(expert_ranks_) +
                          " shards the experts over the data-parallel ranks: set data_parallel=" +
                          std::to_string(expert_ranks_) + "; other layouts are not supported yet");
      }
      // Every rank's MoE layers exchange tokens with the ranks that hold their experts.
      Status rewritten = model_->AddRewrite({"", "moe.Experts", "moe.ExpertsParallel", {}});
      if (!rewritten.ok()) return ctx_.Error(rewritten.message());
    }
    if (pipeline_ranks_ > 1) return SetUpPipeline();
    Communicator* world = WorldCommunicator();
    if (world != nullptr && world->size() > 1) {
      if (ranks_ != world->size()) {
        return ctx_.Error("this process is rank " + std::to_string(world->rank()) + " of " +
                          std::to_string(world->size()) + " (" + world->backend() +
                          "): set data_parallel=" + std::to_string(world->size()) + ", got " +
                          std::to_string(ranks_));
      }
      world_ = world;
    } else if (ranks_ > 1) {
      local_ = MakeLocalCommunicators(ranks_);
    }
    if (zero_ && ranks_ == 1)
      return ctx_.Error("zero_stage=1 shards the optimizer over data_parallel > 1 ranks");
    return Status();
  }

  // Pipeline parallelism: the schedule's instruction lists, run by `pipeline_parallel` virtual
  // ranks or by the launcher's processes.
  Status SetUpPipeline() {
    if (zero_) {
      return ctx_.Error("pipeline_parallel=" + std::to_string(pipeline_ranks_) +
                        " with zero_stage=1: combining them is not supported yet");
    }
    auto kind = dualpipe::ParseScheduleKind(ctx_.String("pipeline_schedule"));
    if (!kind.ok()) return ctx_.Error(kind.status().message());
    bool dual =
        *kind == dualpipe::ScheduleKind::kDualPipe || *kind == dualpipe::ScheduleKind::kDualPipeV;
    int micro = micro_batches_ > 0 ? micro_batches_ : (dual ? 2 : 1) * pipeline_ranks_;
    auto schedule = dualpipe::MakeSchedule(*kind, pipeline_ranks_, micro);
    if (!schedule.ok()) return ctx_.Error("pipeline_schedule: " + schedule.status().message());
    pipeline_.schedule = std::move(*schedule);
    if ((accumulate_ > 1) && micro_batches_ == 0)
      LOG(INFO) << ctx_.node() << ": each of the " << accumulate_ << " accumulated batches runs as "
                << micro << " pipeline micro-batches";
    Communicator* world = WorldCommunicator();
    if (world != nullptr && world->size() > 1) {
      if (pipeline_ranks_ != world->size() || ranks_ > 1) {
        return ctx_.Error("this process is rank " + std::to_string(world->rank()) + " of " +
                          std::to_string(world->size()) + " (" + world->backend() +
                          "): set pipeline_parallel=" + std::to_string(world->size()) + " (got " +
                          std::to_string(pipeline_ranks_) +
                          ") and no data_parallel: pipelines of several data-parallel ranks run "
                          "on virtual ranks only, for now");
      }
      world_ = world;
      return Status();
    }
    // Virtual ranks: data-parallel group g runs a pipeline of ranks (g, 0..P-1), and the ranks
    // with one pipeline position r form a data-parallel group (and an expert-parallel one).
    for (int g = 0; g < ranks_; ++g)
      pipeline_groups_.push_back(MakeLocalCommunicators(pipeline_ranks_));
    if (ranks_ > 1)
      for (int r = 0; r < pipeline_ranks_; ++r)
        data_groups_.push_back(MakeLocalCommunicators(ranks_));
    return Status();
  }

  // The stage programs for micro-batches of these types (built once).
  Status PreparePipeline(const std::vector<TensorType>& types) {
    if (pipeline_.whole != nullptr && types == pipeline_types_) return Status();
    WEIR_ASSIGN_OR_RETURN(pipeline_.whole,
                          model_->GetProgram(types, loss_, function_, function_attrs_));
    pipeline_.stages.clear();
    for (int s = 0; s < pipeline_.schedule.stages; ++s) {
      ProgramOptions::Pipeline stage{pipeline_.schedule.stages, s, stage_starts_};
      auto program = model_->GetProgram(types, loss_, function_, function_attrs_, stage);
      if (!program.ok()) return ctx_.Error("pipeline: " + program.status().message());
      pipeline_.stages.push_back(*program);
    }
    if (pipeline_types_.empty()) {
      std::string cuts;
      for (const std::string& first : pipeline_.stages[0]->stage().first_nodes)
        cuts += (cuts.empty() ? "" : ", ") + first;
      LOG(INFO) << ctx_.node() << ": " << pipeline_.schedule.stages
                << " pipeline stages beginning at " << cuts << " ("
                << dualpipe::ScheduleKindName(pipeline_.schedule.kind) << ", " << pipeline_ranks_
                << " ranks, " << pipeline_.schedule.micro_batches << " micro-batches)";
    }
    pipeline_types_ = types;
    return Status();
  }

  // The batch's rows cut into the data-parallel groups' shares, each into the pipeline's
  // micro-batches: [group][micro-batch][input].
  using MicroBatchSets = std::vector<std::vector<std::vector<Tensor>>>;
  StatusOr<MicroBatchSets> MicroBatches(const std::vector<Tensor>& inputs) {
    int micro = pipeline_.schedule.micro_batches;
    int groups = world_ != nullptr ? 1 : ranks_;
    MicroBatchSets sets;
    for (int g = 0; g < groups; ++g) {
      WEIR_ASSIGN_OR_RETURN(auto share, RowShard(inputs, g, groups));
      sets.emplace_back();
      for (int m = 0; m < micro; ++m) {
        auto rows = RowShard(share, m, micro);
        if (!rows.ok()) {
          return ctx_.Error("the pipeline's " + std::to_string(micro) + " micro-batches" +
                            (groups > 1 ? " of each data-parallel rank's rows" : "") + ": " +
                            rows.status().message());
        }
        sets.back().push_back(std::move(*rows));
      }
    }
    return sets;
  }

  // The micro-batches through the schedule on every rank, then (with data parallelism) the
  // groups' results averaged.
  StatusOr<Program::Outputs> RunPipeline(const MicroBatchSets& sets) {
    if (world_ != nullptr)
      return RunPipelineRank(pipeline_, sets[0], model_->params(), *world_, nullptr,
                             data_position_);
    const int pp = pipeline_ranks_, all = pp * ranks_;
    std::atomic<bool> abort{false};
    std::vector<StatusOr<Program::Outputs>> outs(static_cast<size_t>(all),
                                                 StatusOr<Program::Outputs>(Internal("not run")));
    OnVirtualRanks(all, [&](int t) {
      size_t g = static_cast<size_t>(t / pp), r = static_cast<size_t>(t % pp);
      Communicator* data = ranks_ > 1 ? data_groups_[r][g].get() : nullptr;
      ShardGroupScope experts(expert_ranks_ > 1 ? data : nullptr);
      auto out =
          RunPipelineRank(pipeline_, sets[g], model_->params(), *pipeline_groups_[g][r], &abort);
      if (out.ok() && data != nullptr) {
        Status combined = CombineOverRanks(*data, *out);
        if (!combined.ok()) out = combined;
      }
      if (!out.ok()) abort.store(true);
      outs[static_cast<size_t>(t)] = std::move(out);
    });
    // The failure itself, not a rank that stopped because of it.
    for (auto& out : outs)
      if (!out.ok() && out.status().code() != StatusCode::kCancelled) return out.status();
    for (auto& out : outs) WEIR_RETURN_IF_ERROR(out.status());
    return std::move(*outs[0]);
  }

  Status ParseFunctionAttrs() {
    auto parsed = ParseAttrValues(ctx_.String("function_attrs"), SourceLoc{});
    if (!parsed.ok()) return ctx_.Error("function_attrs: " + parsed.status().message());
    function_attrs_ = std::move(*parsed);
    if (!function_attrs_.empty() && function_.empty())
      return ctx_.Error("function_attrs is set but function is not");
    return Status();
  }

  Status Restore() {
    const fs::path& dir = ctx_.resume_dir();
    // A run folder without a checkpoint: the run was stopped before its first one.
    if (dir.empty()) return Status();
    if (!fs::exists(dir / "trainer_state.json")) {
      LOG(WARNING) << ctx_.node() << ": " << dir.string()
                   << " holds no checkpoint; training starts at step 0";
      return Status();
    }
    Status verified = VerifyChecksums(dir);
    if (!verified.ok()) return ctx_.Error("resume: " + verified.message());
    auto state = ReadJsonFile(dir / "trainer_state.json");
    if (!state.ok()) return ctx_.Error("resume: " + state.status().message());
    // A damaged file is an error naming what is missing, never an abort in protobuf's Map::at.
    for (const char* key : {"step", "data_position"}) {
      auto it = state->fields().find(key);
      if (it == state->fields().end() || !it->second.has_number_value())
        return ctx_.Error("resume: " + (dir / "trainer_state.json").string() + " has no number '" +
                          key + "'");
    }
    step_ = static_cast<int64_t>(state->fields().at("step").number_value());
    data_position_ = static_cast<int64_t>(state->fields().at("data_position").number_value());
    last_checkpoint_ = resumed_step_ = step_;
    // A LoRA run's checkpoint holds its adapters; the base comes from the model's init_from.
    const char* stem = model_->lora().enabled() ? kAdapterStem : "model";
    WEIR_ASSIGN_OR_RETURN(auto params, ReadSafetensorsSharded(dir, stem));
    {
      std::lock_guard<std::mutex> lock(model_->mutex());
      for (auto& [name, t] : params) model_->params().Set(name, t.Clone());  // off the mapping
      model_->Updated();
    }
    WEIR_ASSIGN_OR_RETURN(auto states, ReadSafetensorsSharded(dir, "optimizer"));
    for (auto& [name, t] : states) restored_states_[name] = t.Clone();
    return Status();
  }

  Status Process(int input, const Batch& batch, Emitter& out) override {
    if (input == 1) {
      if (static_cast<int64_t>(eval_.size()) < eval_batches_) eval_.push_back(batch);
      return Status();
    }
    // Batches still in flight when training ended or the user stopped the run are not used, so
    // the checkpoint written at the end matches what a resumed run will continue from.
    if (step_ >= steps_ || ctx_.stop_requested()) return Status();
    auto t0 = Clock::now();
    ++data_position_;
    WEIR_ASSIGN_OR_RETURN(auto inputs, Inputs(batch));
    // With data parallelism the program runs on one rank's rows.
    WEIR_ASSIGN_OR_RETURN(auto rows, RowShard(inputs, 0, ranks_));
    std::shared_ptr<const Program> program;
    MicroBatchSets micro_batches;
    if (pipeline_ranks_ > 1) {
      WEIR_ASSIGN_OR_RETURN(micro_batches, MicroBatches(inputs));
      WEIR_RETURN_IF_ERROR(PreparePipeline(Types(micro_batches[0][0])));
      program = pipeline_.whole;
    } else {
      WEIR_ASSIGN_OR_RETURN(program,
                            model_->GetProgram(Types(rows), loss_, function_, function_attrs_));
    }
    Program::Outputs result;
    {
      // Parameters may not change under a running step.
      std::lock_guard<std::mutex> lock(model_->mutex());
      auto run = pipeline_ranks_ > 1 ? RunPipeline(micro_batches)
                 : ranks_ == 1       ? program->Run(inputs, model_->params())
                                     : RunDataParallel(*program, inputs);
      if (!run.ok())
        return Status(run.status())
            .Prepend("step " + std::to_string(step_ + 1) + " of " + ctx_.node());
      result = std::move(*run);
    }
    for (const std::string& name : program->params_without_gradient())
      result.param_grads.erase(name);
    Accumulate(result.param_grads);
    AccumulateStatistics(*program, result);
    program_ = program;
    tokens_ += inputs.empty() ? 0 : inputs[0].numel();
    busy_ += std::chrono::duration<double>(Clock::now() - t0).count();
    if (++micro_ < accumulate_) return Status();
    WEIR_RETURN_IF_ERROR(OptimizerStep(out));
    return Status();
  }

  Status Finish(Emitter&) override {
    if (eval_every_ > 0 && !eval_.empty() && last_eval_ != step_) WEIR_RETURN_IF_ERROR(Evaluate());
    if (checkpoint_every_ > 0 && step_ > last_checkpoint_) WEIR_RETURN_IF_ERROR(Save());
    return Status();
  }

 private:
  StatusOr<std::vector<Tensor>> Inputs(const Batch& batch) {
    std::vector<Tensor> out;
    for (const std::string& name : inputs_) {
      WEIR_ASSIGN_OR_RETURN(const Tensor* t, batch.Get<TensorColumn>(name));
      out.push_back(*t);
    }
    return out;
  }

  static std::vector<TensorType> Types(const std::vector<Tensor>& inputs) {
    std::vector<TensorType> types;
    for (const Tensor& t : inputs) types.push_back({t.dtype(), t.shape()});
    return types;
  }

  // The loss, every other scalar output of the model (auxiliary losses, which are logged) and
  // the statistics of state parameters are summed over the micro-batches of a step.
  void AccumulateStatistics(const Program& program, const Program::Outputs& result) {
    for (size_t o = 0; o < result.values.size(); ++o) {
      const Tensor& v = result.values[o];
      if (v.numel() == 1 && IsFloating(v.dtype()))
        scalar_sums_[program.output_names()[o]] += v.At(0);
    }
    for (const auto& [param, value] : result.statistics) AddToSum(statistics_, param, value);
  }

  // After the optimizer step: each state parameter takes the value its update op computes from
  // the step's summed statistic; the update op's scalar outputs become metrics, and the
  // statistics go to statistics.jsonl (one row per step).
  Status UpdateStates(std::vector<std::pair<std::string, double>>& metrics) {
    if (statistics_.empty()) return Status();
    std::string row = "{\"step\": " + std::to_string(step_);
    for (const ParamInfo& info : program_->params()) {
      auto stat = statistics_.find(info.name);
      if (info.trainable() || info.frozen || stat == statistics_.end()) continue;
      const OpEntry* op = ctx_.ops().Find(info.update_op);
      if (op == nullptr || !op->shape)
        return ctx_.Error("state '" + info.name + "': no tensor op '" + info.update_op + "'");
      std::map<std::string, AttrValue> values;
      for (const AttrDef& d : op->def.attr()) {
        auto given = info.node_attrs.find(d.name());
        values[d.name()] = given != info.node_attrs.end() ? given->second : d.default_value();
      }
      Attrs attrs(values, "op '" + info.update_op + "'");
      Tensor* param = model_->params().Find(info.name);
      if (param == nullptr) return ctx_.Error("state '" + info.name + "' is not in the model");
      std::vector<TensorType> types = {{param->dtype(), param->shape()},
                                       {stat->second.dtype(), stat->second.shape()}};
      ShapeContext sc(&types, &attrs, op->def.output_size());
      Status shaped = op->shape(sc);
      if (!shaped.ok()) return ctx_.Error("state '" + info.name + "': " + shaped.message());
      const KernelFn* kernel = op->FindKernel("cpu", sc.outputs()[0].dtype);
      if (kernel == nullptr) return ctx_.Error(info.update_op + " has no cpu kernel");
      std::vector<Tensor> outs;
      std::vector<Tensor*> out_ptrs;
      for (const TensorType& t : sc.outputs()) outs.push_back(Tensor::Zeros(t.dtype, t.shape));
      for (Tensor& t : outs) out_ptrs.push_back(&t);
      KernelContext kc({param, &stat->second}, out_ptrs, &attrs);
      Status ran = (*kernel)(kc);
      if (!ran.ok()) return ctx_.Error("state '" + info.name + "': " + ran.message());
      *param = outs[0];
      std::string node = info.name.substr(0, info.name.rfind('.'));
      for (size_t o = 1; o < outs.size(); ++o)
        if (outs[o].numel() == 1)
          metrics.emplace_back(node + "." + op->def.output(static_cast<int>(o)).name(),
                               outs[o].At(0));
      row += ", " + JsonQuote(info.statistic) + ": [";
      for (int64_t i = 0; i < stat->second.numel(); ++i)
        row += (i ? ", " : "") + JsonNumber(stat->second.At(i));
      row += "]";
    }
    statistics_.clear();
    if (!statistics_file_.is_open()) {
      fs::path path = ctx_.OutputPath("statistics.jsonl");
      std::error_code ec;
      fs::create_directories(path.parent_path(), ec);
      // A resumed run continues the file after the checkpoint's step; a fresh one starts it anew.
      if (!ctx_.resume_dir().empty()) {
        WEIR_RETURN_IF_ERROR(TrimJsonlAfterStep(path, resumed_step_));
      } else {
        fs::remove(path, ec);
      }
      statistics_file_.open(path, std::ios::app);
      if (!statistics_file_) return ctx_.Error("cannot write " + path.string());
    }
    statistics_file_ << row << "}\n" << std::flush;
    return Status();
  }

  // Every rank's rows forward and backward, then the outputs combined over the ranks.
  StatusOr<Program::Outputs> RunDataParallel(const Program& program,
                                             const std::vector<Tensor>& inputs) {
    if (world_ != nullptr) {
      WEIR_ASSIGN_OR_RETURN(auto rows, RowShard(inputs, world_->rank(), ranks_));
      ShardGroupScope group(expert_ranks_ > 1 ? world_ : nullptr);
      WEIR_ASSIGN_OR_RETURN(auto out, program.Run(rows, model_->params()));
      WEIR_RETURN_IF_ERROR(CombineOverRanks(*world_, out));
      return out;
    }
    std::vector<StatusOr<Program::Outputs>> outs(static_cast<size_t>(ranks_),
                                                 StatusOr<Program::Outputs>(Internal("not run")));
    // Each virtual rank computes in its own arena. The combine waits on the other ranks, so it
    // starts only once every rank has computed: a failed rank fails the step instead of leaving
    // the others waiting for it.
    OnVirtualRanks(ranks_, [&](int r) {
      ShardGroupScope group(expert_ranks_ > 1 ? local_[static_cast<size_t>(r)].get() : nullptr);
      auto rows = RowShard(inputs, r, ranks_);
      outs[static_cast<size_t>(r)] =
          rows.ok() ? program.Run(*rows, model_->params()) : rows.status();
    });
    for (auto& out : outs) WEIR_RETURN_IF_ERROR(out.status());
    std::vector<Status> combined(static_cast<size_t>(ranks_));
    OnVirtualRanks(ranks_, [&](int r) {
      combined[static_cast<size_t>(r)] =
          CombineOverRanks(*local_[static_cast<size_t>(r)], *outs[static_cast<size_t>(r)]);
    });
    for (const Status& c : combined) WEIR_RETURN_IF_ERROR(c);
    return std::move(*outs[0]);
  }

  // Runs fn(rank) for every virtual rank at once: a thread each (collectives block), each in its
  // own TBB arena with an equal share of the cores.
  void OnVirtualRanks(int ranks, const std::function<void(int)>& fn) const {
    int share = std::max(1, tbb::info::default_concurrency() / ranks);
    Trace* trace = Trace::Current();  // `weir run --trace`: each rank's events under its pid
    std::vector<std::thread> threads;
    for (int r = 0; r < ranks; ++r) {
      threads.emplace_back([&fn, r, share, trace] {
        TraceScope traced(trace, r);
        tbb::task_arena arena(share);
        arena.execute([&] { fn(r); });
      });
    }
    for (std::thread& t : threads) t.join();
  }

  // Sums micro-batch gradients in f32.
  void Accumulate(const std::map<std::string, Tensor>& grads) {
    for (const auto& [name, g] : grads) {
      auto it = grads_.find(name);
      if (it == grads_.end() || micro_ == 0) {
        grads_[name] = g.dtype() == DT_F32 && accumulate_ == 1 ? g : g.To(DT_F32);
        continue;
      }
      Tensor add = g.dtype() == DT_F32 ? g.Contiguous() : g.To(DT_F32);
      float* acc = it->second.data<float>();
      const float* p = add.data<float>();
      for (int64_t i = 0; i < add.numel(); ++i) acc[i] += p[i];
    }
  }

  Status OptimizerStep(Emitter& out) {
    auto t0 = Clock::now();
    ++step_;
    double lr = schedule_.At(step_);
    double scale = 1.0 / static_cast<double>(accumulate_);
    double sumsq = 0;
    for (const auto& [name, g] : grads_) {
      Tensor d = g.Contiguous();
      WEIR_RETURN_IF_ERROR(DispatchFloat(d.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* p = d.data<T>();
        // Deterministic: the same chunks sum in the same order on every run, so a resumed run
        // clips exactly as the uninterrupted one did.
        sumsq += tbb::parallel_deterministic_reduce(
            tbb::blocked_range<int64_t>(0, d.numel(), 1 << 16), 0.0,
            [&](const tbb::blocked_range<int64_t>& r, double part) {
              for (int64_t i = r.begin(); i < r.end(); ++i) {
                double x = static_cast<double>(Widen(p[i]));
                part += x * x;
              }
              return part;
            },
            std::plus<double>());
        return Status();
      }));
    }
    double grad_norm = std::sqrt(sumsq) * scale;
    double loss = scalar_sums_[loss_] / static_cast<double>(micro_);
    if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
      auto text = [](double v) {
        return std::string(std::isnan(v) ? "NaN" : v > 0 ? "inf" : "-inf");
      };
      std::string what = !std::isfinite(loss) ? "the loss '" + loss_ + "' is " + text(loss)
                                              : "the gradient norm is " + text(grad_norm);
      if (!skip_nonfinite_) {
        return ctx_.Error(what + " at step " + std::to_string(step_) +
                          "; on_nonfinite=skip skips such steps, check_finite=true on the model "
                          "names the node that first makes a NaN or Inf");
      }
      return SkipStep(what, out);
    }
    if (clip_ > 0 && grad_norm > clip_) scale *= clip_ / grad_norm;
    Attrs attrs = opt_attrs_;
    attrs.Set("lr", ToAttrValue(lr));
    attrs.Set("grad_scale", ToAttrValue(scale));
    attrs.Set("step", ToAttrValue(int64_t{step_}));
    {
      std::lock_guard<std::mutex> lock(model_->mutex());
      WEIR_RETURN_IF_ERROR(UpdateParameters(attrs));
      model_->Updated();
    }
    std::vector<std::pair<std::string, double>> values = {{"loss", loss},
                                                          {"grad_norm", grad_norm},
                                                          {"lr", lr},
                                                          {"tokens_per_s", 0},
                                                          {"step_time_s", 0}};
    for (const auto& [name, sum] : scalar_sums_)
      if (name != loss_) values.emplace_back(name, sum / static_cast<double>(micro_));
    {
      std::lock_guard<std::mutex> lock(model_->mutex());
      WEIR_RETURN_IF_ERROR(UpdateStates(values));
    }
    busy_ += std::chrono::duration<double>(Clock::now() - t0).count();
    values[3].second = busy_ > 0 ? static_cast<double>(tokens_) / busy_ : 0;
    values[4].second = busy_;
    return EndStep(values, out);
  }

  // The optimizer step of every parameter with a gradient. ZeRO-1: each rank keeps the state of,
  // and updates, its shard of the parameters; processes then send every updated parameter from
  // its owner to the others (virtual ranks share one copy).
  Status UpdateParameters(const Attrs& attrs) {
    std::map<std::string, Tensor>& params = model_->params().mutable_values();
    std::vector<std::string> names;  // a parameter this program does not use has no gradient
    for (const auto& [name, param] : params)
      if (grads_.count(name)) names.push_back(name);
    if (!zero_) {
      for (const std::string& name : names) WEIR_RETURN_IF_ERROR(UpdateParameter(name, attrs));
      return Status();
    }
    if (owners_.empty()) {
      std::map<std::string, Tensor> trained;
      for (const std::string& name : names) trained[name] = params.at(name);
      owners_ = OptimizerShards(trained, ranks_);
    }
    if (world_ != nullptr) {
      for (const std::string& name : names)
        if (owners_.at(name) == world_->rank()) WEIR_RETURN_IF_ERROR(UpdateParameter(name, attrs));
      for (const std::string& name : names) {
        Tensor& param = params.at(name);
        WEIR_ASSIGN_OR_RETURN(Tensor value, world_->Broadcast(param, owners_.at(name)));
        param = value;
      }
      return Status();
    }
    for (const std::string& name : names) states_[name];  // no map insertions across threads
    std::vector<Status> done(static_cast<size_t>(ranks_));
    OnVirtualRanks(ranks_, [&](int r) {
      for (const std::string& name : names) {
        if (owners_.at(name) != r) continue;
        Status s = UpdateParameter(name, attrs);
        if (!s.ok() && done[static_cast<size_t>(r)].ok()) done[static_cast<size_t>(r)] = s;
      }
    });
    for (const Status& s : done) WEIR_RETURN_IF_ERROR(s);
    return Status();
  }

  Status UpdateParameter(const std::string& name, const Attrs& attrs) {
    Tensor& param = model_->params().mutable_values().at(name);
    std::vector<Tensor>& state = states_[name];
    if (state.empty()) {
      for (const std::string& s : state_names_) {
        auto restored = restored_states_.find(name + "." + s);
        state.push_back(restored != restored_states_.end()
                            ? restored->second
                            : Tensor::Zeros(param.dtype(), param.shape()));
      }
    }
    const KernelFn* kernel = optimizer_->FindKernel("cpu", param.dtype());
    if (kernel == nullptr)
      return ctx_.Error("optimizer has no cpu kernel for " + param.DebugString());
    Tensor grad = grads_.at(name).Contiguous();
    std::vector<const Tensor*> ins = {&param, &grad};
    std::vector<Tensor*> outs = {&param};
    for (Tensor& s : state) {
      ins.push_back(&s);
      outs.push_back(&s);
    }
    KernelContext kc(ins, outs, &attrs);
    return (*kernel)(kc);
  }

  // ZeRO-1 across processes: every rank gets the optimizer state of every parameter from its
  // owner, so each rank's checkpoint is complete (and equal to plain data parallelism's).
  Status GatherOptimizerStates() {
    if (!zero_ || world_ == nullptr) return Status();
    for (const auto& [name, owner] : owners_) {
      const Tensor& param = *model_->params().Find(name);
      std::vector<Tensor>& state = states_[name];
      for (size_t i = 0; i < state_names_.size(); ++i) {
        bool mine = owner == world_->rank();
        Tensor sent = mine ? state.at(i) : Tensor::Zeros(param.dtype(), param.shape());
        WEIR_ASSIGN_OR_RETURN(Tensor value, world_->Broadcast(sent, owner));
        if (!mine) {
          state.resize(state_names_.size());
          state[i] = value;
        }
      }
    }
    return Status();
  }

  // on_nonfinite=skip: the step's gradients are dropped and the parameters stay as they were.
  Status SkipStep(const std::string& what, Emitter& out) {
    ++skipped_;
    LOG(WARNING) << ctx_.node() << ": step " << step_ << " skipped: " << what;
    return EndStep({{"skipped_steps", static_cast<double>(skipped_)}, {"lr", schedule_.At(step_)}},
                   out);
  }

  // What every optimizer step ends with, taken or skipped: its metrics, fresh accumulators, and
  // the evaluation, checkpoint and stop that fall on it.
  Status EndStep(const std::vector<std::pair<std::string, double>>& values, Emitter& out) {
    ctx_.Metric(step_, values);
    Batch metrics;
    WEIR_RETURN_IF_ERROR(metrics.Set("step", IntColumn{step_}));
    for (const auto& [k, v] : values) WEIR_RETURN_IF_ERROR(metrics.Set(k, FloatColumn{v}));
    out.Emit(std::move(metrics));
    micro_ = 0;
    scalar_sums_.clear();
    statistics_.clear();
    tokens_ = 0;
    busy_ = 0;
    if (eval_every_ > 0 && step_ % eval_every_ == 0 && !eval_.empty())
      WEIR_RETURN_IF_ERROR(Evaluate());
    if (checkpoint_every_ > 0 && step_ % checkpoint_every_ == 0) WEIR_RETURN_IF_ERROR(Save());
    if (step_ >= steps_) ctx_.FinishSources();
    return Status();
  }

  // eval_loss, and eval_<name> for every other scalar output of the model (eval_lm_loss).
  Status Evaluate() {
    std::map<std::string, double> totals;
    for (const Batch& b : eval_) {
      WEIR_ASSIGN_OR_RETURN(auto inputs, Inputs(b));
      WEIR_ASSIGN_OR_RETURN(auto program,
                            model_->GetProgram(Types(inputs), "", function_, function_attrs_));
      std::lock_guard<std::mutex> lock(model_->mutex());
      WEIR_ASSIGN_OR_RETURN(auto result, program->Run(inputs, model_->params()));
      for (size_t o = 0; o < result.values.size(); ++o) {
        const Tensor& v = result.values[o];
        if (v.numel() == 1 && IsFloating(v.dtype())) {
          const std::string& name = program->output_names()[o];
          totals[name == loss_ ? "eval_loss" : "eval_" + name] += v.At(0);
        }
      }
    }
    std::vector<std::pair<std::string, double>> values;
    for (const auto& [name, total] : totals)
      values.emplace_back(name, total / static_cast<double>(eval_.size()));
    ctx_.Metric(step_, values);
    last_eval_ = step_;
    return Status();
  }

  // checkpoints/step-000100/: model.safetensors, optimizer.safetensors, trainer_state.json and
  // checksums.json (last), written into a temporary folder that is renamed when complete.
  Status Save() {
    WEIR_RETURN_IF_ERROR(GatherOptimizerStates());
    fs::path root = ctx_.OutputPath(ctx_.String("checkpoint_dir"));
    char name[32];
    std::snprintf(name, sizeof(name), "step-%06lld", static_cast<long long>(step_));
    fs::path final_dir = root / name;
    fs::path temp = root / (std::string(name) + ".tmp-" + std::to_string(::getpid()));
    std::error_code ec;
    // Partial folders of a killed earlier attempt (one node writes here, so none is in use).
    for (const auto& e : fs::directory_iterator(root, ec))
      if (e.path().filename().string().find(".tmp-") != std::string::npos)
        fs::remove_all(e.path(), ec);
    fs::create_directories(temp, ec);
    if (ec) return ctx_.Error("cannot create " + temp.string() + ": " + ec.message());
    std::vector<std::pair<std::string, Tensor>> params, states;
    const LoraConfig& lora = model_->lora();
    {
      std::lock_guard<std::mutex> lock(model_->mutex());
      for (const auto& [n, t] : model_->params().values())
        if (!lora.enabled() || IsLoraParam(n)) params.emplace_back(n, t);
    }
    for (const auto& [n, st] : states_)
      for (size_t i = 0; i < st.size(); ++i) states.emplace_back(n + "." + state_names_[i], st[i]);
    int64_t shard = ctx_.Int("max_shard_bytes");
    std::map<std::string, std::string> meta = {{"format", "pt"},
                                               {"weir_model", model_->function()}};
    if (lora.enabled()) {
      // The adapters alone, as Hugging Face PEFT saves them: the frozen base is init_from's.
      WEIR_RETURN_IF_ERROR(WriteSafetensorsSharded(temp, kAdapterStem, params, shard, meta));
      WEIR_RETURN_IF_ERROR(WriteFileAtomically(temp / kAdapterConfigFile, lora.ConfigJson()));
    } else {
      WEIR_RETURN_IF_ERROR(WriteSafetensorsSharded(temp, "model", params, shard, meta));
    }
    WEIR_RETURN_IF_ERROR(WriteSafetensorsSharded(temp, "optimizer", states, shard, meta));
    // What the model is, for readers without the graph (weir generate --model CKPT).
    std::string attrs;
    for (const auto& [key, value] : model_->attrs())
      attrs += (attrs.empty() ? "" : " ") + key + "=" + FormatAttrValue(value);
    WEIR_RETURN_IF_ERROR(WriteFileAtomically(temp / "model.json",
                                             "{\"function\": " + JsonQuote(model_->function()) +
                                                 ", \"attr_string\": " + JsonQuote(attrs) + "}\n"));
    std::string json = "{\"step\": " + std::to_string(step_) +
                       ", \"data_position\": " + std::to_string(data_position_) +
                       ", \"optimizer\": " + JsonQuote(optimizer_->def.name()) +
                       ", \"lr\": " + JsonNumber(schedule_.At(std::max<int64_t>(step_, 1))) + "}\n";
    WEIR_RETURN_IF_ERROR(WriteFileAtomically(temp / "trainer_state.json", json));
    WEIR_RETURN_IF_ERROR(WriteChecksums(temp));
    fs::remove_all(final_dir, ec);
    fs::rename(temp, final_dir, ec);
    if (ec)
      return ctx_.Error("cannot rename " + temp.string() + " to " + final_dir.string() + ": " +
                        ec.message());
    last_checkpoint_ = step_;
    // Keep the newest `keep_checkpoints`; older ones go only after the new one is complete.
    std::vector<fs::path> all = CheckpointFolders(root);
    for (size_t i = 0; keep_ > 0 && i + static_cast<size_t>(keep_) < all.size(); ++i)
      fs::remove_all(all[i], ec);
    return Status();
  }

  const NodeContext& ctx_;
  Model* model_;
  const OpEntry* optimizer_;
  Attrs opt_attrs_;
  std::vector<std::string> state_names_;
  std::vector<std::string> inputs_;
  std::string loss_;
  std::string function_;
  std::map<std::string, AttrValue> function_attrs_;
  int64_t steps_, accumulate_, eval_every_, eval_batches_, checkpoint_every_, keep_;
  double clip_;
  Schedule schedule_;
  int64_t step_ = 0, micro_ = 0, data_position_ = 0, last_checkpoint_ = 0, last_eval_ = -1;
  int64_t resumed_step_ = 0;
  double busy_ = 0;
  bool skip_nonfinite_ = false;
  int64_t skipped_ = 0;
  std::map<std::string, double> scalar_sums_;  // by model output name, over the micro-batches
  std::map<std::string, Tensor> statistics_;   // by state parameter, over the micro-batches
  std::shared_ptr<const Program> program_;     // the last one run, for its parameter list
  std::ofstream statistics_file_;
  int64_t tokens_ = 0;
  std::map<std::string, Tensor> grads_;
  std::map<std::string, std::vector<Tensor>> states_;
  int ranks_ = 1;
  int pipeline_ranks_ = 1;
  int micro_batches_ = 0;
  int expert_ranks_ = 1;
  std::vector<std::string> stage_starts_;
  PipelinePlan pipeline_;
  std::vector<TensorType> pipeline_types_;
  bool zero_ = false;
  Communicator* world_ = nullptr;                     // ranks are processes
  std::vector<std::unique_ptr<Communicator>> local_;  // ranks are threads of this process
  // Pipelines on virtual ranks: [data-parallel group][pipeline rank] and the transpose.
  std::vector<std::vector<std::unique_ptr<Communicator>>> pipeline_groups_, data_groups_;
  std::map<std::string, int> owners_;  // ZeRO-1: parameter -> rank
  std::map<std::string, Tensor> restored_states_;
  std::vector<Batch> eval_;
};

StatusOr<std::unique_ptr<StreamKernel>> MakeTrainStep(const NodeContext& ctx) {
  WEIR_ASSIGN_OR_RETURN(Model * model, ctx.Resource<Model>("model"));
  const std::string& op = ctx.String("optimizer");
  const OpEntry* entry = ctx.ops().Find(op);
  if (entry == nullptr || entry->def.kind() != OpDef::TENSOR || entry->def.input_size() < 2 ||
      entry->def.input_size() != entry->def.output_size() + 1) {
    return ctx.Error("optimizer '" + op +
                     "' is not an update op (inputs param, grad, state...; "
                     "outputs param, state...)" +
                     SuggestClosest(op, ctx.ops().OpNames()));
  }
  // The optimizer's own attrs: its defaults, then optimizer_attrs typed against its schema.
  std::map<std::string, AttrValue> values;
  for (const AttrDef& d : entry->def.attr()) values[d.name()] = d.default_value();
  WEIR_ASSIGN_OR_RETURN(auto written, ParseAttrString(ctx.String("optimizer_attrs"), SourceLoc{}));
  for (const AttrAssignment& a : written) {
    const AttrDef* def = nullptr;
    for (const AttrDef& d : entry->def.attr())
      if (d.name() == a.key) def = &d;
    if (def == nullptr) return ctx.Error("optimizer_attrs: " + op + " has no attr '" + a.key + "'");
    auto typed = CoerceLiteral(a.value, def->type());
    if (typed.ok()) {
      Status c = CheckAttrConstraints(*def, *typed);
      if (!c.ok()) typed = c;
    }
    if (!typed.ok())
      return ctx.Error("optimizer_attrs: attr '" + a.key + "' " + typed.status().message());
    values[a.key] = *typed;
  }
  auto kernel = std::make_unique<TrainStep>(ctx, model, entry, Attrs(values, "op '" + op + "'"));
  WEIR_RETURN_IF_ERROR(kernel->ParseFunctionAttrs());
  WEIR_RETURN_IF_ERROR(kernel->SetUpRanks());
  WEIR_RETURN_IF_ERROR(kernel->Restore());
  return std::unique_ptr<StreamKernel>(std::move(kernel));
}

}  // namespace

void RegisterTrainStep(Registrar& r) {
  r.StreamOp("train.Step")
      .Doc(
          "Trains `model` on the batches of its first input: forward and backward through the "
          "model's function, gradients averaged over `accumulate` micro-batches and clipped to "
          "`grad_clip` global norm, then one `optimizer` step with the scheduled learning rate. "
          "Stops the sources after `steps` optimizer steps. Evaluates every `eval_every` steps "
          "on the batches of its second input. Writes loss, grad_norm, lr, tokens_per_s, "
          "step_time_s (and eval_loss) to metrics.jsonl and out of its output; saves "
          "checkpoints every `checkpoint_every` steps and when it finishes.")
      .Input("batches", "batch", "training batches holding the `inputs` columns")
      .OptionalInput("eval", "batch", "held-out batches (the first eval_batches are kept)")
      .Output("metrics", "batch", "one row per optimizer step")
      .AttrOfType("model", ATTR_RESOURCE, std::nullopt, "the model resource to train")
      .Attr("inputs", std::vector<std::string>{"tokens", "targets"},
            "batch columns passed to the model function, in its input order")
      .Attr<std::string>("loss", "loss", "the model function's output to minimize")
      .Attr<std::string>("function", "",
                         "train through this function of the graph instead of the model's own: "
                         "one that calls the model's function with inline=true, so the "
                         "parameters are shared by name (a GRPO or reward-model loss head)")
      .Attr<std::string>("function_attrs", "",
                         "that function's own attrs, key=value (the model's come from the model)")
      .Attr<int64_t>("steps", 100, "optimizer steps to take", Min(1))
      .Attr<int64_t>("accumulate", 1, "micro-batches per optimizer step", Min(1))
      .Attr<std::string>("optimizer", "optim.AdamW", "the update op")
      .Attr<std::string>("optimizer_attrs", "", "the update op's attrs, key=value (not lr)")
      .Attr<double>("lr", 1e-3, "peak learning rate", Min(0.0))
      .Attr<std::string>("schedule", "cosine", "learning-rate schedule",
                         OneOf{"constant", "cosine", "wsd"})
      .Attr<int64_t>("warmup_steps", 0, "linear warmup from 0", Min(0))
      .Attr<double>("min_lr_ratio", 0.1, "cosine/wsd floor as a fraction of lr", Min(0.0), Max(1.0))
      .Attr<double>("decay_fraction", 0.2, "wsd: share of steps spent decaying", Min(0.0), Max(1.0))
      .Attr<double>("grad_clip", 1.0, "clip the global gradient norm to this (0: off)", Min(0.0))
      .Attr<std::string>("on_nonfinite", "stop",
                         "a NaN or Inf loss or gradient norm: stop the run with an error naming "
                         "the step, or skip the step (no update; skipped_steps is logged)",
                         OneOf{"stop", "skip"})
      .Attr<int64_t>("eval_every", 0, "evaluate every N steps and at the end (0: never)", Min(0))
      .Attr<int64_t>("eval_batches", 4, "held-out batches kept for evaluation", Min(1))
      .Attr<int64_t>("checkpoint_every", 0, "save every N steps and at the end (0: never)", Min(0))
      .Attr<std::string>("checkpoint_dir", "checkpoints", "under the run's output folder")
      .Attr<int64_t>("keep_checkpoints", 2, "newest checkpoints kept (0: all)", Min(0))
      .Attr<int64_t>("data_parallel", 1,
                     "data-parallel ranks: each computes the gradients of 1/data_parallel of "
                     "every batch's rows, averaged before the optimizer step; virtual ranks "
                     "(threads) in one process, or the processes of an mpirun launch (then it "
                     "must equal their number)",
                     Min(1))
      .Attr<int64_t>("zero_stage", 0,
                     "1: ZeRO-1, the optimizer state sharded over the data-parallel ranks (each "
                     "updates its shard of the parameters)",
                     Min(0), Max(1))
      .Attr<int64_t>(
          "pipeline_parallel", 1,
          "pipeline ranks: the model's function is cut into stages (one per rank, two "
          "for dualpipev) that run a pipeline schedule over micro-batches of each batch; "
          "virtual ranks in one process, or the processes of an mpirun launch",
          Min(1))
      .Attr<std::string>("pipeline_schedule", "1f1b", "the pipeline schedule",
                         OneOf{"gpipe", "1f1b", "zb1p", "dualpipe", "dualpipev"})
      .Attr<int64_t>("expert_parallel", 1,
                     "expert-parallel ranks: each of the data-parallel ranks (so data_parallel "
                     "must be equal) holds 1/expert_parallel of every moe.Experts layer's experts, "
                     "and the layers send each token to the ranks of its experts (all-to-all) "
                     "and combine what comes back",
                     Min(1))
      .Attr<int64_t>("micro_batches", 0,
                     "micro-batches a batch's rows are cut into for the pipeline (0: "
                     "pipeline_parallel, twice that for dualpipe and dualpipev)",
                     Min(0))
      .Attr("stage_starts", std::vector<std::string>{},
            "node path prefixes where pipeline stages 1.. begin (moe_layers.1); empty: cut by a "
            "cost model (FLOPs and parameter bytes, at the fewest activation bytes)")
      .Attr<int64_t>("max_shard_bytes", int64_t{4} << 30, "split safetensors files past this size",
                     Min(1))
      .Stateful()
      .Factory(MakeTrainStep);
}

}  // namespace weir::train
