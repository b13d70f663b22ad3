#include "weir/runtime/executor.h"

#include <tbb/flow_graph.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <iomanip>
#include <map>
#include <mutex>
#include <ostream>
#include <sstream>
#include <thread>

#include "weir/json.h"
#include "weir/runtime/trace.h"

namespace weir {
namespace flow = tbb::flow;

namespace {

using Clock = std::chrono::steady_clock;
using Outputs = std::vector<std::pair<int, Batch>>;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

class CollectingEmitter : public Emitter {
 public:
  explicit CollectingEmitter(int num_outputs) : num_outputs_(num_outputs) {}
  void Emit(int port, Batch batch) override {
    if (port < 0 || port >= num_outputs_) {
      bad_port_ = port;
      return;
    }
    outputs_.emplace_back(port, std::move(batch));
  }
  Outputs& outputs() { return outputs_; }
  Status Check() const {
    if (bad_port_ < 0) return Status();
    return Internal("kernel emitted on output port " + std::to_string(bad_port_) + ", the op has " +
                    std::to_string(num_outputs_));
  }

 private:
  int num_outputs_;
  int bad_port_ = -1;
  Outputs outputs_;
};

// Counts the work still derived from one source item. When the last piece is processed, the
// source's limiter may admit another item. References are taken and dropped only inside flow-graph
// bodies, so the limiter is always signalled while the graph is still running.
struct Token {
  explicit Token(flow::limiter_node<Outputs>* l) : limiter(l) {}
  std::atomic<int> refs{1};
  flow::limiter_node<Outputs>* limiter;
};
using TokenPtr = std::shared_ptr<Token>;

void Acquire(const TokenPtr& t) {
  if (t) t->refs.fetch_add(1);
}
void Release(const TokenPtr& t) {
  if (t && t->refs.fetch_sub(1) == 1) t->limiter->decrementer().try_put(flow::continue_msg());
}

struct Packet {
  std::shared_ptr<const Batch> batch;
  TokenPtr token;
  int slot = 0;
  uint64_t seq = 0;
};

struct RtNode {
  const Node* node = nullptr;
  std::unique_ptr<NodeContext> ctx;
  std::unique_ptr<StreamKernel> kernel;
  int num_outputs = 0;
  bool source = false;
  bool concurrent = false;  // more than one call at a time: outputs are re-ordered
  std::vector<std::vector<std::pair<RtNode*, int>>> edges;  // per output port: (consumer, slot)

  std::unique_ptr<flow::input_node<Outputs>> input;
  std::unique_ptr<flow::limiter_node<Outputs>> limiter;
  std::unique_ptr<flow::function_node<Outputs, flow::continue_msg>> router;
  std::unique_ptr<flow::function_node<Packet, flow::continue_msg>> body;
  bool exhausted = false;

  std::mutex put_mu;
  uint64_t next_seq = 0;
  std::mutex release_mu;
  uint64_t next_release = 0;
  std::map<uint64_t, std::pair<Outputs, TokenPtr>> parked;

  std::atomic<uint64_t> items_in{0}, items_out{0}, rows_in{0}, rows_out{0};
  std::atomic<int64_t> busy_ns{0};
  // For the watchdog: calls under way, and when one last began or ended.
  std::atomic<int> calls{0};
  std::atomic<int64_t> last_progress_ns{0};
};

class Run {
 public:
  Run(const Graph& graph, const RunOptions& options) : graph_(graph), options_(options) {}

  RunResult Execute() {
    RunResult result;
    auto start = Clock::now();
    Status created = CreateKernels();
    if (!created.ok()) {
      result.status = created;
      result.nodes = Stats();
      return result;
    }
    // One monitor thread draws progress and runs the watchdog.
    std::thread monitor;
    std::mutex monitor_mu;
    std::condition_variable monitor_cv;
    bool done = false;
    double progress_every = options_.progress_live ? 0.5 : options_.progress_interval_s;
    double hang_timeout = options_.hang_timeout_s;
    if (options_.progress != nullptr || hang_timeout > 0) {
      double tick = options_.progress != nullptr ? progress_every : 1e9;
      if (hang_timeout > 0) tick = std::min(tick, std::clamp(hang_timeout / 4, 0.01, 1.0));
      monitor = std::thread([&, tick] {
        double next_progress = progress_every;
        bool hang_reported = false;
        std::unique_lock<std::mutex> lock(monitor_mu);
        while (
            !monitor_cv.wait_for(lock, std::chrono::duration<double>(tick), [&] { return done; })) {
          double elapsed = Seconds(Clock::now() - start);
          if (options_.progress != nullptr && elapsed >= next_progress) {
            PrintProgress(elapsed, /*final=*/false);
            next_progress = elapsed + progress_every;
          }
          if (hang_timeout > 0 && !hang_reported) hang_reported = CheckForHang(hang_timeout);
        }
      });
    }
    int threads = options_.threads > 0 ? options_.threads : tbb::task_arena::automatic;
    tbb::task_arena arena(threads);
    arena.execute([&] { RunFlowGraph(); });
    if (monitor.joinable()) {
      {
        std::lock_guard<std::mutex> lock(monitor_mu);
        done = true;
      }
      monitor_cv.notify_all();
      monitor.join();
      if (options_.progress != nullptr)
        PrintProgress(Seconds(Clock::now() - start), /*final=*/true);
    }
    result.wall_s = Seconds(Clock::now() - start);
    result.status = first_error_;
    result.interrupted = first_error_.ok() && Stopped();
    result.nodes = Stats();
    return result;
  }

 private:
  bool Stopped() const { return options_.stop != nullptr && options_.stop->load(); }

  // Resources first: kernels look them up when they are created.
  Status CreateResources() {
    env_.graph = &graph_;
    env_.ops = options_.ops != nullptr ? options_.ops : &OpRegistry::Global();
    env_.input_dir = graph_.input_dir;
    env_.out_dir = options_.out_dir;
    env_.resume_dir = options_.resume_dir;
    env_.metrics = options_.metrics;
    env_.stop_requested = options_.stop;
    env_.sources_done = &sources_done_;
    for (const ResourceSpec& r : graph_.resources) {
      const ResourceKindEntry* kind = env_.ops->FindResourceKind(r.kind);
      if (kind == nullptr || !kind->factory) continue;  // a kind without state
      std::map<std::string, AttrValue> attrs(r.resolved_attrs.begin(), r.resolved_attrs.end());
      ResourceContext ctx(r.name, Attrs(std::move(attrs), "resource '" + r.name + "'"), &env_);
      StatusOr<std::shared_ptr<Resource>> made = Internal("resource factory threw");
      try {
        made = kind->factory(ctx);
      } catch (const std::exception& e) {
        made = Internal(std::string("resource factory threw: ") + e.what());
      }
      if (!made.ok()) return Status(made.status()).Prepend("resource '" + r.name + "'").At(r.loc);
      env_.resources[r.name] = *made;
    }
    return Status();
  }

  Status CreateKernels() {
    WEIR_RETURN_IF_ERROR(CreateResources());
    nodes_.resize(graph_.nodes.size());
    for (size_t i = 0; i < graph_.nodes.size(); ++i) {
      const Node& n = graph_.nodes[i];
      auto& rt = nodes_[i];
      rt = std::make_unique<RtNode>();
      rt->node = &n;
      rt->num_outputs =
          NumOutputs(n.entry->def, [&](const std::string& a) { return n.FindAttr(a); });
      rt->edges.resize(rt->num_outputs);
      rt->source = n.inputs.empty();
      rt->concurrent = !n.entry->def.stateful() && n.entry->def.max_concurrency() != 1;
      std::map<std::string, AttrValue> attrs(n.attrs.begin(), n.attrs.end());
      rt->ctx = std::make_unique<NodeContext>(n.name, n.op, std::move(attrs), &env_);
      if (!n.entry->stream_factory) {
        return Internal("op has no kernel").InNode(n.name, n.op).At(n.loc);
      }
      StatusOr<std::unique_ptr<StreamKernel>> kernel = Internal("kernel factory threw");
      try {
        kernel = n.entry->stream_factory(*rt->ctx);
      } catch (const std::exception& e) {
        kernel = Internal(std::string("kernel factory threw: ") + e.what());
      }
      if (!kernel.ok()) return Status(kernel.status()).InNode(n.name, n.op).At(n.loc);
      rt->kernel = std::move(kernel).value();
    }
    for (size_t i = 0; i < graph_.nodes.size(); ++i) {
      for (const Node::Input& in : graph_.nodes[i].inputs)
        nodes_[in.node]->edges[in.port].emplace_back(nodes_[i].get(), in.slot);
    }
    return Status();
  }

  void Fail(RtNode& rt, Status status) {
    std::lock_guard<std::mutex> lock(error_mu_);
    if (!first_error_.ok()) return;
    first_error_ = status.InNode(rt.node->name, rt.node->op).At(rt.node->loc);
    cancelled_ = true;
    graph_flow_->cancel();
  }

  static int64_t NowNs() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
        .count();
  }

  // The first node inside one call for longer than `timeout` fails the run; true once reported.
  bool CheckForHang(double timeout) {
    int64_t now = NowNs();
    for (auto& rt : nodes_) {
      if (rt->calls.load() == 0) continue;
      double stalled = static_cast<double>(now - rt->last_progress_ns.load()) * 1e-9;
      if (stalled <= timeout) continue;
      Fail(*rt, DeadlineExceeded("made no progress for " + JsonNumber(std::round(stalled)) +
                                 " s: a call into the op has not returned (hang timeout " +
                                 JsonNumber(timeout) + " s)"));
      Status error;
      {
        std::lock_guard<std::mutex> lock(error_mu_);
        error = first_error_;
      }
      if (options_.on_hang) options_.on_hang(error);
      return true;
    }
    return false;
  }

  // Calls into a kernel, turning exceptions into errors, counting busy time and tracing the call
  // (`what`: produce, process or finish).
  template <typename F>
  Status Call(RtNode& rt, const char* what, F&& f) {
    auto t0 = Clock::now();
    rt.last_progress_ns = NowNs();
    rt.calls += 1;
    Status s;
    TraceScope traced(options_.trace);
    try {
      s = f();
    } catch (const std::exception& e) {
      s = Internal(std::string("kernel threw: ") + e.what());
    } catch (...) {
      s = Internal("kernel threw an exception that is not a std::exception");
    }
    if (options_.trace != nullptr) options_.trace->Complete(rt.node->name, rt.node->op, t0, what);
    rt.busy_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
    rt.last_progress_ns = NowNs();
    rt.calls -= 1;
    return s;
  }

  void Put(RtNode& to, Packet p) {
    if (to.concurrent) {
      std::lock_guard<std::mutex> lock(to.put_mu);
      p.seq = to.next_seq++;
      to.body->try_put(std::move(p));
    } else {
      to.body->try_put(std::move(p));
    }
  }

  void Deliver(RtNode& from, Outputs& outs, const TokenPtr& token) {
    for (auto& [port, batch] : outs) {
      from.items_out += 1;
      from.rows_out += batch.num_rows();
      auto shared = std::make_shared<const Batch>(std::move(batch));
      for (auto& [to, slot] : from.edges[port]) {
        Acquire(token);
        Put(*to, Packet{shared, token, slot, 0});
      }
    }
  }

  void Process(RtNode& rt, const Packet& p) {
    Outputs outs;
    if (!cancelled_) {
      rt.items_in += 1;
      rt.rows_in += p.batch->num_rows();
      CollectingEmitter emitter(rt.num_outputs);
      Status s = Call(rt, "process", [&] { return rt.kernel->Process(p.slot, *p.batch, emitter); });
      if (s.ok()) s = emitter.Check();
      if (!s.ok()) Fail(rt, s);
      outs = std::move(emitter.outputs());
    }
    if (!rt.concurrent) {
      if (!cancelled_) Deliver(rt, outs, p.token);
      Release(p.token);
      return;
    }
    // Release outputs in arrival order, whichever call finishes first.
    std::lock_guard<std::mutex> lock(rt.release_mu);
    Acquire(p.token);
    rt.parked.emplace(p.seq, std::make_pair(std::move(outs), p.token));
    Release(p.token);
    for (auto it = rt.parked.find(rt.next_release); it != rt.parked.end();
         it = rt.parked.find(rt.next_release)) {
      if (!cancelled_) Deliver(rt, it->second.first, it->second.second);
      Release(it->second.second);
      rt.parked.erase(it);
      ++rt.next_release;
    }
  }

  void BuildFlowGraph() {
    for (auto& rtp : nodes_) {
      RtNode& rt = *rtp;
      if (rt.source) {
        rt.input = std::make_unique<flow::input_node<Outputs>>(
            *graph_flow_, [this, &rt](tbb::flow_control& fc) -> Outputs {
              if (rt.exhausted || cancelled_ || Stopped() || sources_done_) {
                fc.stop();
                return {};
              }
              CollectingEmitter emitter(rt.num_outputs);
              StatusOr<bool> more = true;
              Status s = Call(rt, "produce", [&] {
                more = rt.kernel->Produce(emitter);
                return more.ok() ? emitter.Check() : more.status();
              });
              if (!s.ok()) {
                Fail(rt, s);
                fc.stop();
                return {};
              }
              if (!*more) {
                rt.exhausted = true;
                if (emitter.outputs().empty()) fc.stop();
              }
              return std::move(emitter.outputs());
            });
        rt.limiter = std::make_unique<flow::limiter_node<Outputs>>(
            *graph_flow_,
            static_cast<size_t>(
                std::max(1, rt.node->in_flight > 0 ? rt.node->in_flight : options_.max_in_flight)));
        rt.router = std::make_unique<flow::function_node<Outputs, flow::continue_msg>>(
            *graph_flow_, flow::serial, [this, &rt](Outputs outs) {
              auto token = std::make_shared<Token>(rt.limiter.get());
              // An item made before a node asked the sources to finish, and held at the limiter
              // until now, is not wanted either.
              if (!cancelled_ && !sources_done_) Deliver(rt, outs, token);
              Release(token);
              return flow::continue_msg();
            });
        flow::make_edge(*rt.input, *rt.limiter);
        flow::make_edge(*rt.limiter, *rt.router);
      } else {
        size_t concurrency = rt.concurrent ? (rt.node->entry->def.max_concurrency() > 0
                                                  ? rt.node->entry->def.max_concurrency()
                                                  : flow::unlimited)
                                           : flow::serial;
        rt.body = std::make_unique<flow::function_node<Packet, flow::continue_msg>>(
            *graph_flow_, concurrency, [this, &rt](const Packet& p) {
              Process(rt, p);
              return flow::continue_msg();
            });
      }
    }
  }

  bool Ready(size_t i, const std::vector<bool>& finished) const {
    const Node& n = graph_.nodes[i];
    for (const Node::Input& in : n.inputs)
      if (!finished[in.node]) return false;
    for (int c : n.controls)
      if (!finished[c]) return false;
    return true;
  }

  void RunFlowGraph() {
    graph_flow_ = std::make_unique<flow::graph>(tbb_ctx_);
    BuildFlowGraph();
    size_t n = nodes_.size();
    std::vector<bool> started(n, false), finished(n, false);
    // Sources start once their control dependencies finished; nodes finish in topological order
    // once everything upstream finished.
    while (true) {
      bool progressed = false;
      for (size_t i = 0; i < n; ++i) {
        if (nodes_[i]->source && !started[i] && Ready(i, finished)) {
          started[i] = true;
          nodes_[i]->input->activate();
          progressed = true;
        }
      }
      graph_flow_->wait_for_all();
      if (cancelled_) break;
      for (size_t i = 0; i < n; ++i) {
        if (finished[i] || (nodes_[i]->source && !started[i]) || !Ready(i, finished)) continue;
        RtNode& rt = *nodes_[i];
        CollectingEmitter emitter(rt.num_outputs);
        Status s = Call(rt, "finish", [&] { return rt.kernel->Finish(emitter); });
        if (s.ok()) s = emitter.Check();
        if (!s.ok()) {
          Fail(rt, s);
          break;
        }
        Deliver(rt, emitter.outputs(), nullptr);
        graph_flow_->wait_for_all();
        if (cancelled_) break;
        finished[i] = true;
        progressed = true;
      }
      if (cancelled_ || !progressed) break;
    }
    graph_flow_->wait_for_all();
    // Drop parked outputs of a cancelled run before the graph goes away.
    for (auto& rt : nodes_) rt->parked.clear();
  }

  std::vector<NodeStats> Stats() const {
    std::vector<NodeStats> out;
    for (const auto& rt : nodes_) {
      if (!rt) continue;
      NodeStats s;
      s.name = rt->node->name;
      s.op = rt->node->op;
      s.items_in = rt->items_in;
      s.items_out = rt->items_out;
      s.rows_in = rt->rows_in;
      s.rows_out = rt->rows_out;
      s.busy_s = static_cast<double>(rt->busy_ns.load()) * 1e-9;
      out.push_back(s);
    }
    return out;
  }

  void PrintProgress(double elapsed, bool final) {
    std::ostringstream line;
    line << "[" << std::fixed << std::setprecision(1) << elapsed << "s]";
    // Rows out of sources, in→out through the middle, into sinks.
    for (const auto& rt : nodes_) {
      line << " " << rt->node->name << " ";
      if (rt->source) {
        line << rt->rows_out.load();
      } else if (rt->num_outputs == 0) {
        line << rt->rows_in.load();
      } else {
        line << rt->rows_in.load() << "→" << rt->rows_out.load();
      }
    }
    line << " rows";
    std::ostream& out = *options_.progress;
    if (options_.progress_live) {
      out << "\r\033[K" << line.str() << (final ? "\n" : "") << std::flush;
    } else if (!final) {
      out << line.str() << "\n" << std::flush;
    }
  }

  const Graph& graph_;
  const RunOptions& options_;
  RunEnv env_;
  std::atomic<bool> sources_done_{false};
  // The flow graph must outlive its nodes (they detach from it when destroyed): declared first,
  // destroyed last.
  tbb::task_group_context tbb_ctx_;
  std::unique_ptr<flow::graph> graph_flow_;
  std::vector<std::unique_ptr<RtNode>> nodes_;
  std::atomic<bool> cancelled_{false};
  std::mutex error_mu_;
  Status first_error_;
};

}  // namespace

RunResult RunGraph(const Graph& graph, const RunOptions& options) {
  Run run(graph, options);
  return run.Execute();
}

}  // namespace weir
