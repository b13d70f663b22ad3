// Pipeline schedules as data (plugins/dualpipe): every schedule checks and simulates without
// deadlock on a grid of ranks and micro-batches, DualPipe P=4 M=8 runs the per-rank order of spec
// §5.3, the simulated bubbles equal the DualPipe README's formulas (spec §5.4), bad combinations
// are refused, and hand-broken schedules are caught with the rank and instruction named.
#include <gtest/gtest.h>

#include <algorithm>

#include "schedule.h"
#include "validate.h"

namespace weir::dualpipe {
namespace {

constexpr ScheduleKind kAllKinds[] = {ScheduleKind::kGPipe, ScheduleKind::k1F1B,
                                      ScheduleKind::kZB1P, ScheduleKind::kDualPipe,
                                      ScheduleKind::kDualPipeV};

Schedule Make(ScheduleKind kind, int ranks, int micro_batches) {
  auto schedule = MakeSchedule(kind, ranks, micro_batches);
  EXPECT_TRUE(schedule.ok()) << schedule.status().message();
  return schedule.ok() ? *schedule : Schedule{};
}

// A rank's compute instructions as the DualPipe README writes them, space-separated.
std::string Order(const Schedule& s, int rank) {
  std::string out;
  for (const Instruction& in : s.programs[rank]) {
    if (in.kind == OpKind::kSend || in.kind == OpKind::kRecv) continue;
    out += (out.empty() ? "" : " ") + InstructionLabel(s, in);
  }
  return out;
}

int PeakActivations(const Simulation& sim) {
  int peak = 0;
  for (const RankStats& r : sim.ranks) peak = std::max(peak, r.peak_activations);
  return peak;
}

int Forwards(const Schedule& s, int rank) {
  return static_cast<int>(
      std::count_if(s.programs[rank].begin(), s.programs[rank].end(), [](const Instruction& in) {
        return in.kind == OpKind::kForward || in.kind == OpKind::kForwardBackward;
      }));
}

TEST(DualpipeTest, EveryScheduleValidatesOnTheGrid) {
  for (ScheduleKind kind : kAllKinds) {
    bool dual = kind == ScheduleKind::kDualPipe || kind == ScheduleKind::kDualPipeV;
    for (int p : {2, 4, 8}) {
      for (int m : {p, 2 * p, 3 * p}) {
        SCOPED_TRACE(std::string(ScheduleKindName(kind)) + " P=" + std::to_string(p) +
                     " M=" + std::to_string(m));
        auto schedule = MakeSchedule(kind, p, m);
        if (dual && m < 2 * p) {
          EXPECT_FALSE(schedule.ok());
          continue;
        }
        ASSERT_TRUE(schedule.ok()) << schedule.status().message();
        ASSERT_EQ(schedule->programs.size(), static_cast<size_t>(p));
        for (int r = 0; r < p; ++r) {
          // Every rank runs M forwards: one chunk for M micro-batches, or DualPipe's two chunks
          // for M/2 each; DualPipeV runs both of its chunks for all M.
          EXPECT_EQ(Forwards(*schedule, r), kind == ScheduleKind::kDualPipeV ? 2 * m : m);
        }
        for (double comm : {0.0, 0.5}) {
          Durations d;
          d.comm = comm;
          auto sim = Simulate(*schedule, d);
          ASSERT_TRUE(sim.ok()) << sim.status().message();
          if (comm > 0) continue;
          if (auto formula = FormulaBubble(*schedule, d)) {
            EXPECT_EQ(sim->max_bubble, *formula);
          }
          // GPipe holds every micro-batch; 1F1B and ZB1P at most P; DualPipe(V) PP+1 stages.
          int expected_peak = kind == ScheduleKind::kGPipe       ? m
                              : kind == ScheduleKind::kDualPipe  ? p + 1
                              : kind == ScheduleKind::kDualPipeV ? 2 * p + 1
                                                                 : p;
          EXPECT_EQ(PeakActivations(*sim), expected_peak);
        }
      }
    }
  }
}

TEST(DualpipeTest, RefusesCombinationsTheScheduleCannotRun) {
  struct Case {
    ScheduleKind kind;
    int ranks, micro_batches;
    const char* message;
  } cases[] = {
      {ScheduleKind::kDualPipe, 3, 12,
       "dualpipe needs an even number of ranks (rank r pairs with rank P-1-r), got 3"},
      {ScheduleKind::kDualPipe, 4, 9,
       "dualpipe needs an even number of micro-batches (half enter at each end), got 9"},
      {ScheduleKind::kDualPipe, 4, 6, "dualpipe needs at least 2 x ranks = 8 micro-batches, got 6"},
      {ScheduleKind::kDualPipeV, 4, 7,
       "dualpipev needs at least 2 x ranks = 8 micro-batches, got 7"},
      {ScheduleKind::kGPipe, 4, 0, "gpipe needs at least 1 micro-batch, got 0"},
      {ScheduleKind::k1F1B, 0, 4, "1f1b needs at least 1 rank, got 0"},
  };
  for (const Case& c : cases) {
    auto schedule = MakeSchedule(c.kind, c.ranks, c.micro_batches);
    ASSERT_FALSE(schedule.ok()) << c.message;
    EXPECT_EQ(schedule.status().message(), c.message);
  }
  EXPECT_EQ(ParseScheduleKind("pipedream").status().message(),
            "unknown schedule kind 'pipedream'; expected one of gpipe, 1f1b, zb1p, dualpipe, "
            "dualpipev");
  EXPECT_EQ(*ParseScheduleKind("dualpipev"), ScheduleKind::kDualPipeV);
}

TEST(DualpipeTest, DualPipeP4M8RunsTheOrderOfSpec53) {
  Schedule s = Make(ScheduleKind::kDualPipe, 4, 8);
  const char* expected[] = {
      "FD0 FD1 FD2 FU0 BiU0 WU0 FU1 [FD3&BU1] [FU2&BD0] BU2 [FU3&BD1] BU3 BiD2 WD2 BiD3 WD3",
      "FD0 FU0 FD1 FU1 FD2 BU0 [FU2&BD0] [FD3&BU1] [FU3&BD1] BU2 BD2 BiU3 BiD3 WU3 WD3",
      "FU0 FD0 FU1 FD1 FU2 BD0 [FD2&BU0] [FU3&BD1] [FD3&BU1] BD2 BU2 BiD3 BiU3 WD3 WU3",
      "FU0 FU1 FU2 FD0 BiD0 WD0 FD1 [FU3&BD1] [FD2&BU0] BD2 [FD3&BU1] BD3 BiU2 WU2 BiU3 WU3",
  };
  for (int r = 0; r < 4; ++r) EXPECT_EQ(Order(s, r), expected[r]) << "rank " << r;

  // Rank r holds stages r and P-1-r; direction D runs on chunk 0 from rank 0, U on chunk 1 from
  // rank 3.
  EXPECT_EQ(s.chunk_stage, (std::vector<std::vector<int>>{{0, 3}, {1, 2}, {2, 1}, {3, 0}}));
  EXPECT_EQ(s.route[0][1], (Location{1, 0}));
  EXPECT_EQ(s.route[4][1], (Location{2, 1}));
  Instruction first_send = s.programs[0][1];
  EXPECT_EQ(first_send.kind, OpKind::kSend);
  EXPECT_EQ(first_send.payload, Payload::kActivation);
  EXPECT_EQ(first_send.micro_batch, 0);
  EXPECT_EQ(first_send.peer, 1);

  auto sim = Simulate(s);
  ASSERT_TRUE(sim.ok()) << sim.status().message();
  EXPECT_EQ(sim->makespan, 26);
  for (const RankStats& r : sim->ranks) {
    EXPECT_EQ(r.busy, 24);
    EXPECT_EQ(r.bubble, 2);
    EXPECT_EQ(r.peak_activations, 5);
  }
}

TEST(DualpipeTest, DualPipeVPlacesStagesRAnd2PMinus1MinusR) {
  Schedule s = Make(ScheduleKind::kDualPipeV, 4, 10);
  EXPECT_EQ(s.stages, 8);
  EXPECT_EQ(s.chunk_stage, (std::vector<std::vector<int>>{{0, 7}, {1, 6}, {2, 5}, {3, 4}}));
  // Spec §5.3: rank 0 runs 7 a-phase forwards, then 3 rounds of b forward, Bi and W.
  const std::string start =
      "Fa0 Fa1 Fa2 Fa3 Fa4 Fa5 Fa6 Fb0 Bib0 Wb0 Fb1 Bib1 Wb1 Fb2 Bib2 Wb2 Fb3 ";
  EXPECT_EQ(Order(s, 0).substr(0, start.size()), start);
  // The turn at rank P-1 is local: stage 3's output feeds stage 4, and stage 4's gradient stage
  // 3, with no send or receive.
  for (const Instruction& in : s.programs[3]) {
    if (in.kind != OpKind::kSend && in.kind != OpKind::kRecv) continue;
    EXPECT_EQ(in.peer, 2);
    EXPECT_NE(in.stage, in.payload == Payload::kActivation ? 3 : 4) << InstructionLabel(s, in);
  }
  auto sim = Simulate(s);
  ASSERT_TRUE(sim.ok()) << sim.status().message();
  EXPECT_EQ(sim->max_bubble, 6);  // (8/2-1)(3+2-3)
}

TEST(DualpipeTest, SimulatedBubblesEqualTheReadmeFormulas) {
  struct Case {
    ScheduleKind kind;
    int ranks, micro_batches;
    double forward_backward, bubble;
  } cases[] = {
      {ScheduleKind::k1F1B, 4, 8, 3, 9},       // (4-1)(1+2)
      {ScheduleKind::kZB1P, 4, 8, 3, 3},       // (4-1)(1+2-2)
      {ScheduleKind::kDualPipe, 4, 8, 3, 2},   // (4/2-1)(3+2-3)
      {ScheduleKind::kDualPipe, 4, 8, 2, 1},   // (4/2-1)(2+2-3)
      {ScheduleKind::kDualPipe, 8, 16, 3, 6},  // (8/2-1)(3+2-3)
      {ScheduleKind::kDualPipe, 8, 24, 2, 3},
      {ScheduleKind::kDualPipeV, 4, 8, 3, 6},  // 8 stages: (8/2-1)(3+2-3)
      {ScheduleKind::kDualPipeV, 8, 16, 2, 7},
      {ScheduleKind::k1F1B, 8, 24, 3, 21},
      {ScheduleKind::kZB1P, 8, 24, 3, 7},
  };
  for (const Case& c : cases) {
    Schedule s = Make(c.kind, c.ranks, c.micro_batches);
    Durations d;
    d.forward_backward = c.forward_backward;
    auto sim = Simulate(s, d);
    ASSERT_TRUE(sim.ok()) << sim.status().message();
    EXPECT_EQ(sim->max_bubble, c.bubble) << ScheduleKindName(c.kind) << " P=" << c.ranks;
    EXPECT_EQ(*FormulaBubble(s, d), c.bubble) << ScheduleKindName(c.kind) << " P=" << c.ranks;
  }
  // GPipe has no entry in the table; it idles (P-1)(F+B) like 1F1B while holding all M.
  auto gpipe = Simulate(Make(ScheduleKind::kGPipe, 4, 8));
  ASSERT_TRUE(gpipe.ok());
  EXPECT_EQ(gpipe->max_bubble, 9);
  EXPECT_FALSE(FormulaBubble(Make(ScheduleKind::kGPipe, 4, 8), {}).has_value());
}

TEST(DualpipeTest, CatchesAMissingReceive) {
  Schedule s = Make(ScheduleKind::k1F1B, 2, 2);
  ASSERT_EQ(InstructionLabel(s, s.programs[1][0]), "recv A0.s0<r0");
  s.programs[1].erase(s.programs[1].begin());
  EXPECT_EQ(CheckSchedule(s).message(),
            "rank 1, instruction 0 (F0): needs the activation of micro-batch 0 stage 0 from rank "
            "0 but no receive comes before it");
}

TEST(DualpipeTest, CatchesABackwardBeforeItsForward) {
  Schedule s = Make(ScheduleKind::k1F1B, 2, 2);
  auto& rank1 = s.programs[1];
  ASSERT_EQ(InstructionLabel(s, rank1[5]), "F1");
  ASSERT_EQ(InstructionLabel(s, rank1[6]), "B1");
  std::swap(rank1[5], rank1[6]);
  EXPECT_EQ(Simulate(s).status().message(),
            "rank 1, instruction 5 (B1): runs before the forward, rank 1, instruction 6 (F1)");
}

TEST(DualpipeTest, CatchesReceivesThatWaitOnEachOther) {
  Schedule s = Make(ScheduleKind::k1F1B, 2, 1);
  auto& rank0 = s.programs[0];
  ASSERT_EQ(InstructionLabel(s, rank0[1]), "send A0.s0>r1");
  ASSERT_EQ(InstructionLabel(s, rank0[2]), "recv G0.s1<r1");
  // Rank 0 now waits for the gradient before it sends the activation rank 1 needs to make it.
  std::swap(rank0[1], rank0[2]);
  EXPECT_TRUE(CheckSchedule(s).ok());
  auto sim = Simulate(s);
  ASSERT_FALSE(sim.ok());
  EXPECT_EQ(sim.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(sim.status().message(),
            "deadlock: rank 0, instruction 1 (recv G0.s1<r1) waits for rank 1, instruction 3 "
            "(send G0.s1>r0); rank 1, instruction 0 (recv A0.s0<r0) waits for rank 0, "
            "instruction 2 (send A0.s0>r1)");
}

TEST(DualpipeTest, CatchesMisplacedAndMissingWork) {
  Schedule s = Make(ScheduleKind::kZB1P, 2, 2);
  // A forward moved to the wrong chunk, and a deferred W dropped.
  Schedule misplaced = s;
  for (Instruction& in : misplaced.programs[0]) {
    if (in.kind == OpKind::kForward) {
      in.chunk = 1;
      break;
    }
  }
  EXPECT_EQ(CheckSchedule(misplaced).message(),
            "rank 0, instruction 0 (F0): micro-batch 0 stage 0 belongs on rank 0 chunk 0, not "
            "chunk 1 here");
  Schedule no_weight = s;
  auto& rank1 = no_weight.programs[1];
  rank1.erase(std::find_if(rank1.begin(), rank1.end(),
                           [](const Instruction& in) { return in.kind == OpKind::kWeight; }));
  EXPECT_EQ(CheckSchedule(no_weight).message(),
            "the W of micro-batch 0 stage 1 never runs (it belongs on rank 1) after its Bi");
  Durations slow_weights;
  slow_weights.weight = 3;
  EXPECT_EQ(Simulate(s, slow_weights).status().message(),
            "the weight-gradient time 3 exceeds the full backward time 2 that includes it");
}

}  // namespace
}  // namespace weir::dualpipe
