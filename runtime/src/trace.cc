#include "weir/runtime/trace.h"

#include <thread>

#include "weir/atomic_file.h"
#include "weir/json.h"

namespace weir {
namespace {
thread_local Trace* current_trace = nullptr;
}  // namespace

Trace::Trace() : origin_(std::chrono::steady_clock::now()) {}

Trace* Trace::Current() { return current_trace; }

TraceScope::TraceScope(Trace* trace) : previous_(current_trace) { current_trace = trace; }
TraceScope::~TraceScope() { current_trace = previous_; }

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
  events_.push_back({name, category, detail, pid, ThreadId(), us(start), us(end) - us(start)});
}

size_t Trace::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_.size();
}

Status Trace::Write(const std::filesystem::path& path) const {
  std::string json = "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n";
  std::lock_guard<std::mutex> lock(mu_);
  // Names for the rows Perfetto draws: the process is the rank, threads are numbered.
  json +=
      "{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": 0, \"args\": {\"name\": \"rank 0\"}}";
  for (const auto& [key, tid] : threads_) {
    json += ",\n{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 0, \"tid\": " +
            std::to_string(tid) + ", \"args\": {\"name\": \"thread " + std::to_string(tid) + "\"}}";
  }
  for (const Event& e : events_) {
    json += ",\n{\"name\": " + JsonQuote(e.name) + ", \"cat\": " + JsonQuote(e.category) +
            ", \"ph\": \"X\", \"pid\": " + std::to_string(e.pid) +
            ", \"tid\": " + std::to_string(e.tid) + ", \"ts\": " + JsonNumber(e.start_us) +
            ", \"dur\": " + JsonNumber(e.duration_us);
    if (!e.detail.empty()) json += ", \"args\": {\"detail\": " + JsonQuote(e.detail) + "}";
    json += "}";
  }
  json += "\n]}\n";
  return WriteFileAtomically(path, json);
}

}  // namespace weir
