#include "schedule.h"

#include <algorithm>
#include <deque>

namespace weir::dualpipe {

namespace {

constexpr struct {
  ScheduleKind kind;
  std::string_view name;
} kKindNames[] = {{ScheduleKind::kGPipe, "gpipe"},
                  {ScheduleKind::k1F1B, "1f1b"},
                  {ScheduleKind::kZB1P, "zb1p"},
                  {ScheduleKind::kDualPipe, "dualpipe"},
                  {ScheduleKind::kDualPipeV, "dualpipev"}};

Status CheckCombination(ScheduleKind kind, int ranks, int micro_batches) {
  std::string name(ScheduleKindName(kind));
  if (ranks < 1)
    return InvalidArgument(name + " needs at least 1 rank, got " + std::to_string(ranks));
  if (micro_batches < 1) {
    return InvalidArgument(name + " needs at least 1 micro-batch, got " +
                           std::to_string(micro_batches));
  }
  if (kind == ScheduleKind::kDualPipe) {
    if (ranks % 2 != 0) {
      return InvalidArgument(
          "dualpipe needs an even number of ranks (rank r pairs with rank P-1-r), got " +
          std::to_string(ranks));
    }
    if (micro_batches % 2 != 0) {
      return InvalidArgument(
          "dualpipe needs an even number of micro-batches (half enter at each end), got " +
          std::to_string(micro_batches));
    }
  }
  if ((kind == ScheduleKind::kDualPipe || kind == ScheduleKind::kDualPipeV) &&
      micro_batches < 2 * ranks) {
    return InvalidArgument(name + " needs at least 2 x ranks = " + std::to_string(2 * ranks) +
                           " micro-batches, got " + std::to_string(micro_batches));
  }
  return Status::Ok();
}

// Stage placement and every micro-batch's path through the ranks.
Schedule Place(ScheduleKind kind, int ranks, int micro_batches) {
  Schedule s;
  s.kind = kind;
  s.ranks = ranks;
  s.micro_batches = micro_batches;
  s.stages = kind == ScheduleKind::kDualPipeV ? 2 * ranks : ranks;
  s.chunk_stage.resize(ranks);
  s.route.assign(micro_batches, std::vector<Location>(s.stages));
  s.programs.resize(ranks);
  for (int r = 0; r < ranks; ++r) {
    switch (kind) {
      case ScheduleKind::kDualPipe:
        s.chunk_stage[r] = {r, ranks - 1 - r};
        break;
      case ScheduleKind::kDualPipeV:
        s.chunk_stage[r] = {r, 2 * ranks - 1 - r};
        break;
      default:
        s.chunk_stage[r] = {r};
    }
  }
  for (int m = 0; m < micro_batches; ++m) {
    for (int stage = 0; stage < s.stages; ++stage) {
      Location& where = s.route[m][stage];
      if (kind == ScheduleKind::kDualPipe) {
        bool down = m < micro_batches / 2;
        where = down ? Location{stage, 0} : Location{ranks - 1 - stage, 1};
      } else if (kind == ScheduleKind::kDualPipeV) {
        where = stage < ranks ? Location{stage, 0} : Location{2 * ranks - 1 - stage, 1};
      } else {
        where = Location{stage, 0};
      }
    }
  }
  return s;
}

// Appends one rank's instructions chunk by chunk: each chunk runs its micro-batches' forwards and
// backwards in feed order, receives come right before the work that needs them, and sends right
// after the work that produced them unless the caller posts them later (as DualPipe's middle
// ranks do).
class ProgramBuilder {
 public:
  ProgramBuilder(Schedule* schedule, int rank)
      : s_(*schedule), rank_(rank), out_(schedule->programs[rank]) {
    int chunks = static_cast<int>(s_.chunk_stage[rank].size());
    queue_.resize(chunks);
    for (int m = 0; m < s_.micro_batches; ++m) {
      for (int c = 0; c < chunks; ++c) {
        if (s_.route[m][s_.chunk_stage[rank][c]] == Location{rank, c}) queue_[c].push_back(m);
      }
    }
    next_forward_.assign(chunks, 0);
    next_backward_.assign(chunks, 0);
    next_forward_send_.assign(chunks, 0);
    next_backward_send_.assign(chunks, 0);
  }

  void Forward(int chunk, bool send = true) {
    Instruction f = Work(OpKind::kForward, chunk, next_forward_[chunk]++);
    ReceiveActivation(f);
    out_.push_back(f);
    if (send) SendForward(chunk);
  }

  void Backward(int chunk, bool defer_weights, bool send = true) {
    Instruction b = Work(defer_weights ? OpKind::kBackwardInput : OpKind::kBackward, chunk,
                         next_backward_[chunk]++);
    ReceiveGradient(b.micro_batch, b.stage);
    out_.push_back(b);
    if (defer_weights) deferred_weights_.push_back(Work(OpKind::kWeight, chunk, b));
    if (send) SendBackward(chunk);
  }

  // The oldest deferred weight-gradient work (the DualPipe WeightGradStore is a FIFO).
  void Weight() {
    out_.push_back(deferred_weights_.front());
    deferred_weights_.pop_front();
  }

  void ForwardBackward(int forward_chunk, int backward_chunk) {
    Instruction pair =
        Work(OpKind::kForwardBackward, forward_chunk, next_forward_[forward_chunk]++);
    Instruction b = Work(OpKind::kBackward, backward_chunk, next_backward_[backward_chunk]++);
    pair.backward_micro_batch = b.micro_batch;
    pair.backward_stage = b.stage;
    pair.backward_chunk = backward_chunk;
    ReceiveActivation(pair);
    ReceiveGradient(b.micro_batch, b.stage);
    out_.push_back(pair);
    SendForward(forward_chunk);
    SendBackward(backward_chunk);
  }

  // Posts the send of the chunk's oldest forward output not yet sent (none for a last stage or
  // when the next stage is on this rank).
  void SendForward(int chunk) {
    int m = queue_[chunk][next_forward_send_[chunk]++];
    int stage = s_.chunk_stage[rank_][chunk];
    if (stage + 1 < s_.stages) Transfer(OpKind::kSend, Payload::kActivation, m, stage, stage + 1);
  }

  void SendBackward(int chunk) {
    int m = queue_[chunk][next_backward_send_[chunk]++];
    int stage = s_.chunk_stage[rank_][chunk];
    if (stage > 0) Transfer(OpKind::kSend, Payload::kGradient, m, stage, stage - 1);
  }

 private:
  Instruction Work(OpKind kind, int chunk, int index) {
    Instruction i;
    i.kind = kind;
    i.micro_batch = queue_[chunk][index];
    i.stage = s_.chunk_stage[rank_][chunk];
    i.chunk = chunk;
    return i;
  }
  static Instruction Work(OpKind kind, int chunk, const Instruction& of) {
    Instruction i = of;
    i.kind = kind;
    i.chunk = chunk;
    return i;
  }

  void ReceiveActivation(const Instruction& forward) {
    if (forward.stage > 0) {
      Transfer(OpKind::kRecv, Payload::kActivation, forward.micro_batch, forward.stage - 1,
               forward.stage - 1);
    }
  }
  void ReceiveGradient(int m, int stage) {
    if (stage + 1 < s_.stages) Transfer(OpKind::kRecv, Payload::kGradient, m, stage + 1, stage + 1);
  }

  // A send or receive of the tensor stage `produced_by` made for micro-batch m, with the rank
  // running `peer_stage`; nothing when that is this rank.
  void Transfer(OpKind kind, Payload payload, int m, int produced_by, int peer_stage) {
    int peer = s_.route[m][peer_stage].rank;
    if (peer == rank_) return;
    Instruction t;
    t.kind = kind;
    t.payload = payload;
    t.micro_batch = m;
    t.stage = produced_by;
    t.peer = peer;
    out_.push_back(t);
  }

  const Schedule& s_;
  int rank_;
  std::vector<Instruction>& out_;
  std::vector<std::vector<int>> queue_;  // per chunk: its micro-batches in feed order
  std::vector<int> next_forward_, next_backward_, next_forward_send_, next_backward_send_;
  std::deque<Instruction> deferred_weights_;
};

void GPipe(Schedule* s) {
  for (int r = 0; r < s->ranks; ++r) {
    ProgramBuilder b(s, r);
    for (int m = 0; m < s->micro_batches; ++m) b.Forward(0);
    for (int m = 0; m < s->micro_batches; ++m) b.Backward(0, false);
  }
}

// 1F1B: P-1-r warm-up forwards, then one forward and one backward in turn, then the backwards
// left; at most P-r micro-batches are in flight on rank r.
void OneForwardOneBackward(Schedule* s) {
  for (int r = 0; r < s->ranks; ++r) {
    ProgramBuilder b(s, r);
    int warmup = std::min(s->ranks - 1 - r, s->micro_batches);
    for (int i = 0; i < warmup; ++i) b.Forward(0);
    for (int i = warmup; i < s->micro_batches; ++i) {
      b.Forward(0);
      b.Backward(0, false);
    }
    for (int i = 0; i < warmup; ++i) b.Backward(0, false);
  }
}

// ZB1P (ZB-H1): 1F1B's order and memory bound with each backward split into Bi and W, the W
// moved to where the rank would otherwise wait. The order is what a list scheduler gives with
// unit-time F, Bi and W: an idle rank runs the next Bi if its gradient has arrived, else the next
// F if it has its input and fewer than P-r micro-batches are in flight, else the oldest W.
void ZeroBubble(Schedule* s) {
  const int ranks = s->ranks, micro_batches = s->micro_batches;
  constexpr int kNever = 1 << 30;
  // done_f[r][m], done_b[r][m]: when rank r finished F / Bi of micro-batch m.
  std::vector<std::vector<int>> done_f(ranks, std::vector<int>(micro_batches, kNever));
  std::vector<std::vector<int>> done_b = done_f;
  std::vector<int> next_f(ranks, 0), next_b(ranks, 0), weights_left(ranks, 0);
  std::vector<std::vector<OpKind>> order(ranks);
  int finished = 0;
  for (int t = 0; finished < ranks; ++t) {
    finished = 0;
    for (int r = 0; r < ranks; ++r) {
      int f = next_f[r], b = next_b[r];
      bool grad_ready = b < f && done_f[r][b] <= t && (r == ranks - 1 || done_b[r + 1][b] <= t);
      bool input_ready =
          f < micro_batches && (r == 0 || done_f[r - 1][f] <= t) && f - b < ranks - r;
      if (grad_ready) {
        done_b[r][b] = t + 1;
        ++next_b[r];
        ++weights_left[r];
        order[r].push_back(OpKind::kBackwardInput);
      } else if (input_ready) {
        done_f[r][f] = t + 1;
        ++next_f[r];
        order[r].push_back(OpKind::kForward);
      } else if (weights_left[r] > 0) {
        --weights_left[r];
        order[r].push_back(OpKind::kWeight);
      } else if (next_b[r] == micro_batches) {
        ++finished;
      }
    }
  }
  for (int r = 0; r < ranks; ++r) {
    ProgramBuilder b(s, r);
    for (OpKind kind : order[r]) {
      if (kind == OpKind::kForward) b.Forward(0);
      if (kind == OpKind::kBackwardInput) b.Backward(0, true);
      if (kind == OpKind::kWeight) b.Weight();
    }
  }
}

// DualPipe's eight steps (spec §5.2), per rank. DualPipeV runs the same loop with Q->P, h->r,
// m->M, its chunks never swapping phases; "middle" ranks (h = Q-1) post some sends later and run
// their first main-step forward and backward apart.
void DualPipeFamily(Schedule* s) {
  const bool v = s->kind == ScheduleKind::kDualPipeV;
  const int ranks = s->ranks;
  const int half_ranks = v ? ranks : ranks / 2;
  const int half_chunks = v ? s->micro_batches : s->micro_batches / 2;
  for (int r = 0; r < ranks; ++r) {
    ProgramBuilder b(s, r);
    const int h = v ? r : std::min(r, ranks - 1 - r);
    const bool middle = h == half_ranks - 1;
    // Phase 0 is the direction that starts on this rank's side of the pipeline.
    const int swap = !v && r >= ranks / 2 ? 1 : 0;
    const int c0 = swap, c1 = 1 - swap;

    for (int i = 0; i < 2 * (half_ranks - h - 1); ++i) b.Forward(c0);
    for (int i = 0; i <= h; ++i) {
      b.Forward(c0, middle);
      b.Forward(c1, !middle || i < h);
      if (!middle) b.SendForward(c0);
    }
    for (int i = 0; i < half_ranks - h - 1; ++i) {
      b.Backward(c1, true);
      b.Weight();
      b.Forward(c1);
    }
    for (int i = 0; i < half_chunks - 2 * half_ranks + h + 1; ++i) {
      if (i == 0 && middle) {
        b.Forward(c0, false);
        b.SendForward(c1);
        b.Backward(c1, false, false);
        b.SendForward(c0);
        b.SendBackward(c1);
      } else {
        b.ForwardBackward(c0, c1);
      }
      b.ForwardBackward(c1, c0);
    }
    for (int i = 0; i < half_ranks - h - 1; ++i) {
      b.Backward(c1, false);
      b.ForwardBackward(c1, c0);
    }
    // The last rounds defer weight gradients so that the W steps below can fill the drain; the
    // switch falls before B1 for odd h and between B1 and B0 for even h.
    bool defer = false;
    for (int i = 0; i <= h; ++i) {
      if (i == (h + 1) / 2 && h % 2 == 1) defer = true;
      b.Backward(c1, defer);
      if (i == (h + 1) / 2 && h % 2 == 0) defer = true;
      b.Backward(c0, defer);
    }
    for (int i = 0; i < half_ranks - h - 1; ++i) {
      b.Weight();
      b.Backward(c0, true);
    }
    for (int i = 0; i <= h; ++i) b.Weight();
  }
}

}  // namespace

std::string_view ScheduleKindName(ScheduleKind kind) {
  for (const auto& k : kKindNames)
    if (k.kind == kind) return k.name;
  return "?";
}

StatusOr<ScheduleKind> ParseScheduleKind(std::string_view name) {
  std::string known;
  for (const auto& k : kKindNames) {
    if (k.name == name) return k.kind;
    known += (known.empty() ? "" : ", ") + std::string(k.name);
  }
  return InvalidArgument("unknown schedule kind '" + std::string(name) + "'; expected one of " +
                         known);
}

std::string_view OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kForward:
      return "F";
    case OpKind::kBackward:
      return "B";
    case OpKind::kBackwardInput:
      return "Bi";
    case OpKind::kWeight:
      return "W";
    case OpKind::kForwardBackward:
      return "F&B";
    case OpKind::kSend:
      return "send";
    case OpKind::kRecv:
      return "recv";
  }
  return "?";
}

StatusOr<Schedule> MakeSchedule(ScheduleKind kind, int ranks, int micro_batches) {
  WEIR_RETURN_IF_ERROR(CheckCombination(kind, ranks, micro_batches));
  Schedule s = Place(kind, ranks, micro_batches);
  switch (kind) {
    case ScheduleKind::kGPipe:
      GPipe(&s);
      break;
    case ScheduleKind::k1F1B:
      OneForwardOneBackward(&s);
      break;
    case ScheduleKind::kZB1P:
      ZeroBubble(&s);
      break;
    case ScheduleKind::kDualPipe:
    case ScheduleKind::kDualPipeV:
      DualPipeFamily(&s);
      break;
  }
  return s;
}

int DisplayMicroBatch(const Schedule& schedule, int micro_batch) {
  int half = schedule.micro_batches / 2;
  if (schedule.kind == ScheduleKind::kDualPipe && micro_batch >= half) return micro_batch - half;
  return micro_batch;
}

namespace {

// "D3"/"U3" for DualPipe, "a3"/"b3" for DualPipeV, "3" otherwise.
std::string WorkName(const Schedule& s, int micro_batch, int chunk) {
  std::string number = std::to_string(DisplayMicroBatch(s, micro_batch));
  if (s.kind == ScheduleKind::kDualPipe) return (chunk == 0 ? "D" : "U") + number;
  if (s.kind == ScheduleKind::kDualPipeV) return (chunk == 0 ? "a" : "b") + number;
  return number;
}

}  // namespace

std::string InstructionLabel(const Schedule& s, const Instruction& i) {
  switch (i.kind) {
    case OpKind::kForwardBackward:
      return "[F" + WorkName(s, i.micro_batch, i.chunk) + "&B" +
             WorkName(s, i.backward_micro_batch, i.backward_chunk) + "]";
    case OpKind::kSend:
    case OpKind::kRecv:
      return std::string(OpKindName(i.kind)) + " " +
             (i.payload == Payload::kActivation ? "A" : "G") + std::to_string(i.micro_batch) +
             ".s" + std::to_string(i.stage) + (i.kind == OpKind::kSend ? ">r" : "<r") +
             std::to_string(i.peer);
    default:
      return std::string(OpKindName(i.kind)) + WorkName(s, i.micro_batch, i.chunk);
  }
}

}  // namespace weir::dualpipe
