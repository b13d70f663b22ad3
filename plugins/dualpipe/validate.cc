#include "validate.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "weir/json.h"

namespace weir::dualpipe {

namespace {

// Where an instruction sits: its rank and index in that rank's program.
struct Place {
  int rank = -1;
  int index = -1;
  bool found() const { return rank >= 0; }
};

// What a send or receive carries, which identifies the matching pair.
using TensorKey = std::tuple<Payload, int, int>;  // payload, micro-batch, producing stage

std::string Describe(const Schedule& s, Place p) {
  return "rank " + std::to_string(p.rank) + ", instruction " + std::to_string(p.index) + " (" +
         InstructionLabel(s, s.programs[p.rank][p.index]) + ")";
}

std::string Work(int micro_batch, int stage) {
  return "micro-batch " + std::to_string(micro_batch) + " stage " + std::to_string(stage);
}

std::string TensorName(const TensorKey& key) {
  auto [payload, m, stage] = key;
  return std::string(payload == Payload::kActivation ? "the activation" : "the gradient") + " of " +
         Work(m, stage);
}

struct StageWork {
  Place forward, backward, weight;  // backward: B, Bi or the B of an F&B pair
  bool split = false;               // the backward was a Bi
};

class Checker {
 public:
  explicit Checker(const Schedule& s) : s_(s) {}

  Status Run() {
    if (static_cast<int>(s_.programs.size()) != s_.ranks) {
      return InvalidArgument("the schedule has " + std::to_string(s_.programs.size()) +
                             " programs for " + std::to_string(s_.ranks) + " ranks");
    }
    bool routed = static_cast<int>(s_.route.size()) == s_.micro_batches;
    for (const auto& path : s_.route) routed = routed && static_cast<int>(path.size()) == s_.stages;
    if (!routed) {
      return InvalidArgument("the schedule's route does not give a place to each of the " +
                             std::to_string(s_.stages) + " stages of its " +
                             std::to_string(s_.micro_batches) + " micro-batches");
    }
    work_.assign(s_.micro_batches, std::vector<StageWork>(s_.stages));
    for (int r = 0; r < s_.ranks; ++r) {
      for (int i = 0; i < static_cast<int>(s_.programs[r].size()); ++i) Record({r, i});
    }
    // Order checks on misplaced or unknown work would only repeat the same problem.
    if (!errors_.empty()) return Status::Join(errors_);
    for (int m = 0; m < s_.micro_batches; ++m) {
      for (int stage = 0; stage < s_.stages; ++stage) CheckStage(m, stage);
    }
    for (const auto* transfers : {&sends_, &recvs_}) {
      for (const auto& [key, place] : *transfers) {
        if (!CrossesRanks(key))
          Error(place, "moves " + TensorName(key) + ", which stays on its rank");
      }
    }
    return Status::Join(errors_);
  }

 private:
  bool CrossesRanks(const TensorKey& key) const {
    auto [payload, m, stage] = key;
    int to = payload == Payload::kActivation ? stage + 1 : stage - 1;
    return to >= 0 && to < s_.stages && s_.route[m][stage].rank != s_.route[m][to].rank;
  }

  void Error(Place p, const std::string& message) {
    errors_.push_back(InvalidArgument(Describe(s_, p) + ": " + message));
  }

  void Record(Place p) {
    const Instruction& in = s_.programs[p.rank][p.index];
    bool transfer = in.kind == OpKind::kSend || in.kind == OpKind::kRecv;
    if (in.micro_batch < 0 || in.micro_batch >= s_.micro_batches || in.stage < 0 ||
        in.stage >= s_.stages) {
      return Error(p, "names " + Work(in.micro_batch, in.stage) + ", outside the " +
                          std::to_string(s_.micro_batches) + " micro-batches and " +
                          std::to_string(s_.stages) + " stages");
    }
    if (transfer) {
      if (in.peer < 0 || in.peer >= s_.ranks || in.peer == p.rank)
        return Error(p, "has peer rank " + std::to_string(in.peer) + ", not another rank");
      auto& seen = in.kind == OpKind::kSend ? sends_ : recvs_;
      auto [it, added] = seen.emplace(TensorKey{in.payload, in.micro_batch, in.stage}, p);
      if (!added) Error(p, "repeats " + Describe(s_, it->second));
      return;
    }
    switch (in.kind) {
      case OpKind::kForward:
        Mark(p, in.micro_batch, in.stage, in.chunk, &StageWork::forward, "forward");
        break;
      case OpKind::kBackward:
      case OpKind::kBackwardInput:
        if (Mark(p, in.micro_batch, in.stage, in.chunk, &StageWork::backward, "backward"))
          work_[in.micro_batch][in.stage].split = in.kind == OpKind::kBackwardInput;
        break;
      case OpKind::kWeight:
        Mark(p, in.micro_batch, in.stage, in.chunk, &StageWork::weight, "weight gradients");
        break;
      case OpKind::kForwardBackward:
        Mark(p, in.micro_batch, in.stage, in.chunk, &StageWork::forward, "forward");
        if (in.backward_micro_batch < 0 || in.backward_micro_batch >= s_.micro_batches ||
            in.backward_stage < 0 || in.backward_stage >= s_.stages) {
          return Error(p, "pairs with " + Work(in.backward_micro_batch, in.backward_stage) +
                              ", which does not exist");
        }
        Mark(p, in.backward_micro_batch, in.backward_stage, in.backward_chunk, &StageWork::backward,
             "backward");
        break;
      default:
        break;
    }
  }

  // Notes that p runs `what` for micro-batch m at `stage`; false when that is wrong.
  bool Mark(Place p, int m, int stage, int chunk, Place StageWork::*slot, const char* what) {
    Location expected = s_.route[m][stage];
    if (expected != Location{p.rank, chunk}) {
      Error(p, Work(m, stage) + " belongs on rank " + std::to_string(expected.rank) + " chunk " +
                   std::to_string(expected.chunk) + ", not chunk " + std::to_string(chunk) +
                   " here");
      return false;
    }
    Place& seen = work_[m][stage].*slot;
    if (seen.found()) {
      Error(p, "runs the " + std::string(what) + " of " + Work(m, stage) + " again, after " +
                   Describe(s_, seen));
      return false;
    }
    seen = p;
    return true;
  }

  void CheckStage(int m, int stage) {
    const StageWork& w = work_[m][stage];
    std::string missing = " of " + Work(m, stage) + " never runs (it belongs on rank " +
                          std::to_string(s_.route[m][stage].rank) + ")";
    if (!w.forward.found()) return Missing("the forward" + missing);
    if (!w.backward.found()) return Missing("the backward" + missing);
    if (w.split && !w.weight.found()) return Missing("the W" + missing + " after its Bi");
    if (!w.split && w.weight.found())
      return Error(w.weight, "has no deferred weight gradients: " + Describe(s_, w.backward) +
                                 " computed them");
    if (w.backward.index <= w.forward.index)
      Error(w.backward, "runs before the forward, " + Describe(s_, w.forward));
    if (w.split && w.weight.index < w.backward.index)
      Error(w.weight, "runs before the input backward, " + Describe(s_, w.backward));
    if (stage > 0) Link(Payload::kActivation, m, stage - 1, stage);
    if (stage + 1 < s_.stages) Link(Payload::kGradient, m, stage + 1, stage);
  }

  void Missing(const std::string& message) { errors_.push_back(InvalidArgument(message)); }

  // The tensor `from` produces for micro-batch m must reach `to` before `to` consumes it: by
  // program order on one rank, else by a send after the producer and a receive before the
  // consumer.
  void Link(Payload payload, int m, int from, int to) {
    bool activation = payload == Payload::kActivation;
    Place producer = activation ? work_[m][from].forward : work_[m][from].backward;
    Place consumer = activation ? work_[m][to].forward : work_[m][to].backward;
    std::string tensor = TensorName({payload, m, from});
    if (producer.rank == consumer.rank) {
      if (consumer.index <= producer.index)
        Error(consumer, "needs " + tensor + ", which " + Describe(s_, producer) + " makes later");
      return;
    }
    TensorKey key{payload, m, from};
    auto send = sends_.find(key);
    if (send == sends_.end()) {
      Error(producer, "makes " + tensor + " for rank " + std::to_string(consumer.rank) +
                          " but no send follows");
    } else if (send->second.rank != producer.rank || send->second.index < producer.index) {
      Error(send->second, "sends " + tensor + " before or away from " + Describe(s_, producer));
    } else if (s_.programs[send->second.rank][send->second.index].peer != consumer.rank) {
      Error(send->second, "sends " + tensor + " to the wrong rank; rank " +
                              std::to_string(consumer.rank) + " needs it");
    }
    auto recv = recvs_.find(key);
    if (recv == recvs_.end()) {
      Error(consumer, "needs " + tensor + " from rank " + std::to_string(producer.rank) +
                          " but no receive comes before it");
    } else if (recv->second.rank != consumer.rank || recv->second.index > consumer.index) {
      Error(recv->second, "receives " + tensor + " after or away from " + Describe(s_, consumer));
    } else if (s_.programs[recv->second.rank][recv->second.index].peer != producer.rank) {
      Error(recv->second, "receives " + tensor + " from the wrong rank; rank " +
                              std::to_string(producer.rank) + " makes it");
    }
  }

  const Schedule& s_;
  std::vector<Status> errors_;
  std::vector<std::vector<StageWork>> work_;  // [micro-batch][stage]
  std::map<TensorKey, Place> sends_, recvs_;
};

double Duration(const Instruction& in, const Durations& d) {
  switch (in.kind) {
    case OpKind::kForward:
      return d.forward;
    case OpKind::kBackward:
      return d.backward;
    case OpKind::kBackwardInput:
      return d.backward - d.weight;
    case OpKind::kWeight:
      return d.weight;
    case OpKind::kForwardBackward:
      return d.forward_backward;
    default:
      return 0;
  }
}

Status CheckDurations(const Durations& d) {
  if (d.forward < 0 || d.backward < 0 || d.weight < 0 || d.forward_backward < 0 || d.comm < 0)
    return InvalidArgument("durations must not be negative");
  if (d.weight > d.backward) {
    return InvalidArgument("the weight-gradient time " + ShortestDouble(d.weight) +
                           " exceeds the full backward time " + ShortestDouble(d.backward) +
                           " that includes it");
  }
  return Status::Ok();
}

// Follows the receives the stuck ranks wait at to a cycle and names it.
Status Deadlock(const Schedule& s, const std::vector<int>& pc,
                const std::map<TensorKey, Place>& sends) {
  auto waits_for = [&](int rank) {
    const Instruction& in = s.programs[rank][pc[rank]];
    return sends.at({in.payload, in.micro_batch, in.stage});
  };
  int rank = 0;
  while (pc[rank] == static_cast<int>(s.programs[rank].size())) ++rank;
  // Walking the wait-for edges P times from a stuck rank lands inside the cycle.
  for (int step = 0; step < s.ranks; ++step) rank = waits_for(rank).rank;
  std::string message = "deadlock:";
  int start = rank;
  do {
    Place send = waits_for(rank);
    message += (rank == start ? " " : "; ") + Describe(s, {rank, pc[rank]}) + " waits for " +
               Describe(s, send);
    rank = send.rank;
  } while (rank != start);
  return FailedPrecondition(message);
}

}  // namespace

Status CheckSchedule(const Schedule& schedule) { return Checker(schedule).Run(); }

StatusOr<Simulation> Simulate(const Schedule& s, const Durations& d) {
  WEIR_RETURN_IF_ERROR(CheckDurations(d));
  WEIR_RETURN_IF_ERROR(CheckSchedule(s));
  std::map<TensorKey, Place> sends;
  for (int r = 0; r < s.ranks; ++r) {
    for (int i = 0; i < static_cast<int>(s.programs[r].size()); ++i) {
      const Instruction& in = s.programs[r][i];
      if (in.kind == OpKind::kSend) sends[{in.payload, in.micro_batch, in.stage}] = {r, i};
    }
  }
  Simulation sim;
  sim.ranks.resize(s.ranks);
  for (int r = 0; r < s.ranks; ++r) sim.ranks[r].timings.resize(s.programs[r].size());
  std::vector<int> pc(s.ranks, 0);
  std::vector<double> clock(s.ranks, 0);
  std::map<TensorKey, double> sent_at;
  // Sends never block, so each rank runs until a receive whose send has not happened; a rank's
  // times depend only on its own order and on send times, so the visiting order does not matter.
  for (bool moved = true; moved;) {
    moved = false;
    for (int r = 0; r < s.ranks; ++r) {
      const auto& program = s.programs[r];
      auto& timings = sim.ranks[r].timings;
      for (; pc[r] < static_cast<int>(program.size()); ++pc[r]) {
        const Instruction& in = program[pc[r]];
        TensorKey key{in.payload, in.micro_batch, in.stage};
        double start = clock[r];
        if (in.kind == OpKind::kRecv) {
          auto sent = sent_at.find(key);
          if (sent == sent_at.end()) break;
          start = std::max(start, sent->second + d.comm);
        }
        clock[r] = start + Duration(in, d);
        timings[pc[r]] = {start, clock[r]};
        if (in.kind == OpKind::kSend) sent_at[key] = clock[r];
        sim.ranks[r].busy += Duration(in, d);
        moved = true;
      }
    }
  }
  for (int r = 0; r < s.ranks; ++r) {
    if (pc[r] < static_cast<int>(s.programs[r].size())) return Deadlock(s, pc, sends);
  }
  sim.makespan = *std::max_element(clock.begin(), clock.end());
  for (int r = 0; r < s.ranks; ++r) {
    RankStats& stats = sim.ranks[r];
    stats.bubble = sim.makespan - stats.busy;
    sim.max_bubble = std::max(sim.max_bubble, stats.bubble);
    int held = 0;
    for (const Instruction& in : s.programs[r]) {
      if (in.kind == OpKind::kForward || in.kind == OpKind::kForwardBackward) ++held;
      stats.peak_activations = std::max(stats.peak_activations, held);
      if (in.kind == OpKind::kBackward || in.kind == OpKind::kBackwardInput ||
          in.kind == OpKind::kForwardBackward) {
        --held;
      }
    }
  }
  return sim;
}

std::optional<double> FormulaBubble(const Schedule& s, const Durations& d) {
  double pp = s.stages;
  switch (s.kind) {
    case ScheduleKind::k1F1B:
      return (pp - 1) * (d.forward + d.backward);
    case ScheduleKind::kZB1P:
      return (pp - 1) * (d.forward + d.backward - 2 * d.weight);
    case ScheduleKind::kDualPipe:
    case ScheduleKind::kDualPipeV:
      return (pp / 2 - 1) * (d.forward_backward + d.backward - 3 * d.weight);
    case ScheduleKind::kGPipe:
      break;
  }
  return std::nullopt;
}

}  // namespace weir::dualpipe
