#include "weir/runtime/trace.h"

#include <atomic>
#include <set>
#include <thread>

#include "weir/atomic_file.h"
#include "weir/json.h"

namespace weir {
namespace {
thread_local Trace* current_trace = nullptr;
thread_local int current_rank = -1;
std::atomic<int> process_rank{0};
}  // namespace

Trace::Trace() : origin_(std::chrono::steady_clock::now()) {}

Trace* Trace::Current() { return current_trace; }

int Trace::CurrentRank() { return current_rank >= 0 ? current_rank : process_rank.load(); }
void Trace::SetProcessRank(int rank) { process_rank = rank; }

TraceScope::TraceScope(Trace* trace, int rank)
    : previous_(current_trace), previous_rank_(current_rank) {
  current_trace = trace;
  if (rank >= 0) current_rank = rank;
}
TraceScope::~TraceScope() {
  current_trace = previous_;
  current_rank = previous_rank_;
}

int Trace::ThreadId() {
  size_t key = std::hash<std::thread::id>()(std::this_thread::get_id());
  for (const auto& [k, id] : threads_)
    if (k == key) return id;
  threads_.emplace_back(key, static_cast<int>(threads_.size()));
  return threads_.back().second;
}

void Trace::Complete(const std::string& name, const std::string& category,
                     std::chrono::steady_clock::time_point start, const std::string& detail,
                     int pid) {
  auto end = std::chrono::steady_clock::now();
  auto us = [&](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double, std::micro>(t - origin_).count();
  };
  std::lock_guard<std::mutex> lock(mu_);
  if (pid < 0) pid = CurrentRank();
  events_.push_back({name, category, detail, pid, ThreadId(), us(start), us(end) - us(start)});
}

void Trace::Flow(const std::string& name, uint64_t id, bool start,
                 std::chrono::steady_clock::time_point at, int pid) {
  double us = std::chrono::duration<double, std::micro>(at - origin_).count();
  std::lock_guard<std::mutex> lock(mu_);
  if (pid < 0) pid = CurrentRank();
  events_.push_back({name, "flow", "", pid, ThreadId(), us, 0, start ? 's' : 'f', id});
}

size_t Trace::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_.size();
}

Status Trace::Write(const std::filesystem::path& path) const {
  std::string json = "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n";
  std::lock_guard<std::mutex> lock(mu_);
  // Names for the rows Perfetto draws: a process per rank, its threads numbered.
  std::set<int> ranks = {CurrentRank()};
  std::set<std::pair<int, int>> threads;
  for (const Event& e : events_) {
    ranks.insert(e.pid);
    threads.insert({e.pid, e.tid});
  }
  const char* separator = "";
  for (int rank : ranks) {
    json += separator + std::string("{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": ") +
            std::to_string(rank) + ", \"args\": {\"name\": \"rank " + std::to_string(rank) + "\"}}";
    separator = ",\n";
  }
  for (const auto& [rank, tid] : threads) {
    json += ",\n{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": " + std::to_string(rank) +
            ", \"tid\": " + std::to_string(tid) + ", \"args\": {\"name\": \"thread " +
            std::to_string(tid) + "\"}}";
  }
  for (const Event& e : events_) {
    json += ",\n{\"name\": " + JsonQuote(e.name) + ", \"cat\": " + JsonQuote(e.category) +
            ", \"ph\": \"" + std::string(1, e.phase) + "\", \"pid\": " + std::to_string(e.pid) +
            ", \"tid\": " + std::to_string(e.tid) + ", \"ts\": " + JsonNumber(e.start_us);
    if (e.phase != 'X') {
      // The finish binds to the event it falls in (the receive), not to the next one.
      json +=
          ", \"id\": " + std::to_string(e.flow_id) + (e.phase == 'f' ? ", \"bp\": \"e\"}" : "}");
      continue;
    }
    json += ", \"dur\": " + JsonNumber(e.duration_us);
    if (!e.detail.empty()) json += ", \"args\": {\"detail\": " + JsonQuote(e.detail) + "}";
    json += "}";
  }
  json += "\n]}\n";
  return WriteFileAtomically(path, json);
}

}  // namespace weir
