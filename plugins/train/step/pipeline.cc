#include "step/pipeline.h"

#include <tbb/task_group.h>

#include <chrono>
#include <map>
#include <thread>
#include <tuple>

#include "step/data_parallel.h"
#include "weir/runtime/trace.h"
#include "weir/runtime/world.h"

namespace weir::train {
namespace {

using dualpipe::Instruction;
using dualpipe::OpKind;
using dualpipe::Payload;
using Clock = std::chrono::steady_clock;

// A message's tensors: the activations a stage's forward made for a micro-batch, or the
// gradients of its boundary inputs its backward made (they go to the stage before).
using Key = std::tuple<Payload, int, int>;  // payload, micro-batch, producing stage

class RankRunner {
 public:
  RankRunner(const PipelinePlan& plan, const std::vector<std::vector<Tensor>>& micro_batches,
             const ParamStore& params, Communicator& comm, std::atomic<bool>* abort, int64_t batch)
      : plan_(plan),
        micro_batches_(micro_batches),
        params_(params),
        comm_(comm),
        abort_(abort),
        batch_(batch) {
    for (const auto& stage : plan.stages)
      most_tensors_ = std::max(most_tensors_, static_cast<int>(stage->stage().outputs.size()));
    ++most_tensors_;
  }

  Status Run() {
    const auto& program = plan_.schedule.programs.at(static_cast<size_t>(comm_.rank()));
    Trace* trace = Trace::Current();
    for (const Instruction& in : program) {
      auto started = Clock::now();
      Status s = Execute(in);
      if (!s.ok()) {
        return s.Prepend("rank " + std::to_string(comm_.rank()) + ", " +
                         dualpipe::InstructionLabel(plan_.schedule, in));
      }
      if (trace != nullptr) {
        std::string label = dualpipe::InstructionLabel(plan_.schedule, in);
        bool transfer = in.kind == OpKind::kSend || in.kind == OpKind::kRecv;
        if (transfer) {
          // An arrow from the send to its receive, which share the key; the batch number and
          // the sender's trace pid keep apart the arrows of other steps and other pipelines
          // (data-parallel groups of virtual ranks have pids g·P + r).
          bool send = in.kind == OpKind::kSend;
          int sender = Trace::CurrentRank() - comm_.rank() + (send ? comm_.rank() : in.peer);
          uint64_t id = (static_cast<uint64_t>(batch_) << 40) |
                        (static_cast<uint64_t>(sender) << 24) |
                        static_cast<uint64_t>(Tag(in.payload, in.micro_batch, in.stage, 0));
          trace->Flow(label, id, send, send ? started : Clock::now());
        }
        trace->Complete(label, "pipeline", started, std::string(dualpipe::OpKindName(in.kind)));
      }
    }
    for (auto& [handle, tensor] : sends_) WEIR_RETURN_IF_ERROR(Await(handle));
    if (!runs_.empty()) return Internal("micro-batches left without a backward pass");
    return Status();
  }

  // Sums over the ranks (in rank order, so every rank gets the same bits).
  StatusOr<Program::Outputs> Combine() {
    const Program& whole = *plan_.whole;
    const double micro = static_cast<double>(micro_batches_.size());
    Program::Outputs out;
    for (const ParamInfo& p : whole.params()) {
      if (!p.trainable() || p.frozen) continue;
      auto it = grads_.find(p.name);
      Tensor mine = it != grads_.end() ? it->second : Tensor::Zeros(DT_F32, p.type.shape);
      WEIR_ASSIGN_OR_RETURN(Tensor sum, comm_.AllReduce(mine, ReduceOp::kSum));
      float* g = sum.data<float>();
      for (int64_t i = 0; i < sum.numel(); ++i)
        g[i] = static_cast<float>(static_cast<double>(g[i]) / micro);
      out.param_grads[p.name] = sum;
    }
    // Scalar outputs: their sums, then how many micro-batches gave each.
    const auto& names = whole.output_names();
    Tensor scalars = Tensor::Zeros(DT_F64, {2 * static_cast<int64_t>(names.size())});
    for (size_t o = 0; o < names.size(); ++o) {
      auto it = scalar_sums_.find(names[o]);
      if (it == scalar_sums_.end()) continue;
      scalars.data<double>()[o] = it->second.first;
      scalars.data<double>()[names.size() + o] = it->second.second;
    }
    WEIR_ASSIGN_OR_RETURN(Tensor total, comm_.AllReduce(scalars, ReduceOp::kSum));
    for (size_t o = 0; o < names.size(); ++o) {
      double count = total.data<double>()[names.size() + o];
      out.values.push_back(count > 0 ? Tensor::Full(DT_F64, {}, total.data<double>()[o] / micro)
                                     : Tensor::Zeros(DT_F64, {0}));
    }
    // Statistics: only the ranks of the owning stage have them, so their shapes travel first
    // (dims count + 1, then the dims; zeros where absent; max over ranks).
    std::vector<std::string> states;
    for (const ParamInfo& p : whole.params())
      if (!p.trainable() && !p.frozen) states.push_back(p.name);
    constexpr int64_t kRecord = 9;
    Tensor shapes = Tensor::Zeros(DT_I64, {static_cast<int64_t>(states.size()) * kRecord});
    for (size_t k = 0; k < states.size(); ++k) {
      auto it = statistics_.find(states[k]);
      if (it == statistics_.end()) continue;
      if (it->second.rank() > kRecord - 1) return Internal("statistic of more than 8 dims");
      int64_t* row = shapes.data<int64_t>() + static_cast<int64_t>(k) * kRecord;
      row[0] = it->second.rank() + 1;
      for (int d = 0; d < it->second.rank(); ++d) row[1 + d] = it->second.dim(d);
    }
    WEIR_ASSIGN_OR_RETURN(Tensor known, comm_.AllReduce(shapes, ReduceOp::kMax));
    for (size_t k = 0; k < states.size(); ++k) {
      const int64_t* row = known.data<int64_t>() + static_cast<int64_t>(k) * kRecord;
      if (row[0] == 0) continue;  // no micro-batch computed it
      Shape shape(row + 1, row + row[0]);
      auto it = statistics_.find(states[k]);
      Tensor mine = it != statistics_.end() ? it->second : Tensor::Zeros(DT_F32, shape);
      WEIR_ASSIGN_OR_RETURN(Tensor sum, comm_.AllReduce(mine, ReduceOp::kSum));
      out.statistics[states[k]] = sum;
    }
    return out;
  }

 private:
  const Program& StageProgram(int stage) const {
    return *plan_.stages.at(static_cast<size_t>(stage));
  }
  int Stages() const { return static_cast<int>(plan_.stages.size()); }
  // The boundary inputs of `stage` that take a gradient: what its backward sends back.
  int GradientCount(int stage) const {
    int n = 0;
    for (bool g : StageProgram(stage).stage().input_grad) n += g ? 1 : 0;
    return n;
  }
  int TensorCount(Payload payload, int stage) const {
    return payload == Payload::kActivation
               ? static_cast<int>(StageProgram(stage).stage().outputs.size())
               : GradientCount(stage);
  }
  int Tag(Payload payload, int micro_batch, int stage, int k) const {
    int kind = payload == Payload::kActivation ? 0 : 1;
    return ((micro_batch * Stages() + stage) * 2 + kind) * most_tensors_ + k;
  }

  // Waits for a transfer, giving up when another virtual rank failed.
  Status Await(CommHandle& handle) {
    auto pause = std::chrono::microseconds(20);
    while (!handle.Test()) {
      if (abort_ != nullptr && abort_->load()) return Cancelled("another rank failed");
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
    return handle.Wait();
  }

  StatusOr<std::vector<Tensor>> Take(const Key& key) {
    auto it = inbox_.find(key);
    if (it == inbox_.end()) {
      return Internal(
          std::string(std::get<0>(key) == Payload::kActivation ? "activation" : "gradient") +
          " of micro-batch " + std::to_string(std::get<1>(key)) + " stage " +
          std::to_string(std::get<2>(key)) + " is not here");
    }
    std::vector<Tensor> tensors = std::move(it->second);
    inbox_.erase(it);
    return tensors;
  }

  // The parts of a forward: what it needs from the inbox, the run, what it leaves there.
  struct Forward {
    int micro_batch = 0, stage = 0;
    std::vector<Tensor> inputs;
    std::unique_ptr<Program::Execution> run;
  };
  struct Backward {
    int micro_batch = 0, stage = 0;
    bool weights = true;
    std::vector<Tensor> output_grads;
    Program::Execution* run = nullptr;
  };

  StatusOr<Forward> PrepareForward(int micro_batch, int stage) {
    Forward f;
    f.micro_batch = micro_batch;
    f.stage = stage;
    f.inputs = micro_batches_.at(static_cast<size_t>(micro_batch));
    if (stage > 0) {
      WEIR_ASSIGN_OR_RETURN(auto boundary, Take({Payload::kActivation, micro_batch, stage - 1}));
      for (Tensor& t : boundary) f.inputs.push_back(std::move(t));
    }
    f.run = StageProgram(stage).Start(params_);
    return f;
  }
  void FinishForward(Forward& f) {
    const Program& program = StageProgram(f.stage);
    Program::Outputs outs = f.run->outputs();
    size_t own = program.output_names().size() - program.stage().outputs.size();
    for (size_t o = 0; o < own; ++o) {
      const Tensor& v = outs.values[o];
      if (v.numel() != 1 || !IsFloating(v.dtype())) continue;
      auto& [sum, count] = scalar_sums_[program.output_names()[o]];
      sum += v.At(0);
      count += 1;
    }
    std::vector<Tensor> boundary(outs.values.begin() + static_cast<std::ptrdiff_t>(own),
                                 outs.values.end());
    if (f.stage + 1 < Stages()) inbox_[{Payload::kActivation, f.micro_batch, f.stage}] = boundary;
    runs_[{f.micro_batch, f.stage}] = std::move(f.run);
  }

  StatusOr<Backward> PrepareBackward(int micro_batch, int stage, bool weights) {
    Backward b;
    b.micro_batch = micro_batch;
    b.stage = stage;
    b.weights = weights;
    auto it = runs_.find({micro_batch, stage});
    if (it == runs_.end()) return Internal("backward before its forward");
    b.run = it->second.get();
    if (stage + 1 < Stages()) {
      WEIR_ASSIGN_OR_RETURN(b.output_grads, Take({Payload::kGradient, micro_batch, stage + 1}));
    }
    return b;
  }
  void FinishBackward(const Backward& b) {
    Program::Outputs outs = b.run->outputs();
    if (b.stage > 0) inbox_[{Payload::kGradient, b.micro_batch, b.stage}] = outs.input_grads;
    if (b.weights) Collect(b.micro_batch, b.stage);
  }

  // A micro-batch's stage is done: its gradients join the sums and its activations go.
  void Collect(int micro_batch, int stage) {
    auto it = runs_.find({micro_batch, stage});
    Program::Outputs outs = it->second->outputs();
    for (const auto& [name, g] : outs.param_grads) AddToSum(grads_, name, g);
    for (const auto& [name, s] : outs.statistics) AddToSum(statistics_, name, s);
    runs_.erase(it);
  }

  Status Execute(const Instruction& in) {
    switch (in.kind) {
      case OpKind::kForward: {
        WEIR_ASSIGN_OR_RETURN(Forward f, PrepareForward(in.micro_batch, in.stage));
        WEIR_RETURN_IF_ERROR(f.run->Forward(std::move(f.inputs)));
        FinishForward(f);
        return Status();
      }
      case OpKind::kBackward:
      case OpKind::kBackwardInput: {
        WEIR_ASSIGN_OR_RETURN(
            Backward b, PrepareBackward(in.micro_batch, in.stage, in.kind == OpKind::kBackward));
        WEIR_RETURN_IF_ERROR(b.run->Backward(std::move(b.output_grads), b.weights));
        FinishBackward(b);
        return Status();
      }
      case OpKind::kWeight: {
        auto it = runs_.find({in.micro_batch, in.stage});
        if (it == runs_.end()) return Internal("W without its forward");
        WEIR_RETURN_IF_ERROR(it->second->Weights());
        Collect(in.micro_batch, in.stage);
        return Status();
      }
      case OpKind::kForwardBackward: {
        // The two halves touch different executions; the inbox is read before and written
        // after, on this thread.
        WEIR_ASSIGN_OR_RETURN(Forward f, PrepareForward(in.micro_batch, in.stage));
        WEIR_ASSIGN_OR_RETURN(Backward b,
                              PrepareBackward(in.backward_micro_batch, in.backward_stage, true));
        Status forward, backward;
        if (ShardGroup() != nullptr) {
          // Both halves would issue expert-parallel collectives on one communicator, whose
          // order must be the same on every rank: one after the other.
          forward = f.run->Forward(std::move(f.inputs));
          if (forward.ok()) backward = b.run->Backward(std::move(b.output_grads), true);
        } else {
          Trace* trace = Trace::Current();
          int rank = Trace::CurrentRank();
          tbb::task_group both;
          both.run([&] {
            TraceScope traced(trace, rank);
            forward = f.run->Forward(std::move(f.inputs));
          });
          both.run([&] {
            TraceScope traced(trace, rank);
            backward = b.run->Backward(std::move(b.output_grads), true);
          });
          both.wait();
        }
        WEIR_RETURN_IF_ERROR(forward);
        WEIR_RETURN_IF_ERROR(backward);
        FinishForward(f);
        FinishBackward(b);
        return Status();
      }
      case OpKind::kSend: {
        WEIR_ASSIGN_OR_RETURN(std::vector<Tensor> tensors,
                              Take({in.payload, in.micro_batch, in.stage}));
        for (size_t k = 0; k < tensors.size(); ++k) {
          int tag = Tag(in.payload, in.micro_batch, in.stage, static_cast<int>(k));
          sends_.emplace_back(comm_.StartSend(tensors[k], in.peer, tag), tensors[k]);
        }
        return Status();
      }
      case OpKind::kRecv: {
        std::vector<Tensor> tensors;
        int count = TensorCount(in.payload, in.stage);
        for (int k = 0; k < count; ++k) {
          CommHandle h = comm_.StartRecv(in.peer, Tag(in.payload, in.micro_batch, in.stage, k));
          WEIR_RETURN_IF_ERROR(Await(h));
          tensors.push_back(h.result());
        }
        inbox_[{in.payload, in.micro_batch, in.stage}] = std::move(tensors);
        return Status();
      }
    }
    return Internal("unknown instruction");
  }

  const PipelinePlan& plan_;
  const std::vector<std::vector<Tensor>>& micro_batches_;
  const ParamStore& params_;
  Communicator& comm_;
  std::atomic<bool>* abort_;
  int64_t batch_;
  int most_tensors_ = 1;
  std::map<Key, std::vector<Tensor>> inbox_;
  std::map<std::pair<int, int>, std::unique_ptr<Program::Execution>> runs_;
  std::vector<std::pair<CommHandle, Tensor>> sends_;  // the tensor lives until its send is done
  std::map<std::string, Tensor> grads_, statistics_;
  std::map<std::string, std::pair<double, double>> scalar_sums_;  // sum, micro-batches
};

}  // namespace

StatusOr<Program::Outputs> RunPipelineRank(const PipelinePlan& plan,
                                           const std::vector<std::vector<Tensor>>& micro_batches,
                                           const ParamStore& params, Communicator& comm,
                                           std::atomic<bool>* abort, int64_t batch) {
  RankRunner runner(plan, micro_batches, params, comm, abort, batch);
  Status ran = runner.Run();
  if (!ran.ok() && abort != nullptr) abort->store(true);
  // Every rank learns whether all finished before the sums, so none waits in them for a rank
  // that gave up.
  Tensor failed = Tensor::Full(DT_I32, {}, ran.ok() ? 0 : 1);
  auto any = comm.AllReduce(failed, ReduceOp::kMax);
  if (!ran.ok()) return ran;
  if (!any.ok()) return any.status();
  if (any->At(0) != 0)
    return Cancelled("rank " + std::to_string(comm.rank()) + ": another rank failed");
  return runner.Combine();
}

}  // namespace weir::train
