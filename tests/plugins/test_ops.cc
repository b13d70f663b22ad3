// Ops used only by weir's own tests: sources and sinks that measure the runtime (order,
// in-flight bounds), nodes that fail on purpose, and schemas that exercise validation.
#include <atomic>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "weir/plugin.h"

namespace {

using namespace weir;

// Items emitted by test.Count and consumed by test.SlowSink, to measure what is in flight.
std::atomic<int64_t> g_emitted{0};
std::atomic<int64_t> g_consumed{0};

void Sleep(int64_t ms) {
  if (ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

class Count : public StreamKernel {
 public:
  explicit Count(const NodeContext& ctx)
      : n_(ctx.Int("n")), rows_(ctx.Int("rows")), sleep_ms_(ctx.Int("sleep_ms")) {
    g_emitted = 0;
    g_consumed = 0;
  }
  StatusOr<bool> Produce(Emitter& out) override {
    if (n_ >= 0 && next_ >= n_) return false;
    Sleep(sleep_ms_);
    IntColumn values;
    for (int64_t r = 0; r < rows_; ++r) values.push_back(next_ * rows_ + r);
    Batch b;
    WEIR_RETURN_IF_ERROR(b.Set("i", std::move(values)));
    ++next_;
    ++g_emitted;
    out.Emit(std::move(b));
    return true;
  }

 private:
  int64_t n_, rows_, sleep_ms_;
  int64_t next_ = 0;
};

class SlowSink : public StreamKernel {
 public:
  explicit SlowSink(const NodeContext& ctx)
      : ctx_(ctx),
        sleep_ms_(ctx.Int("sleep_ms")),
        fill_(ctx.Int("fill")),
        total_(ctx.Int("total")) {}
  Status Process(int, const Batch&, Emitter&) override {
    Sleep(sleep_ms_);
    // Waits (up to 5 s) until the source has `fill` items out, or has made all `total`: on a busy
    // machine the source may be slow to run, and the test needs the queue full, not a race.
    for (int waited = 0; waited < 5000 && fill_ > 0; ++waited) {
      int64_t out = g_emitted.load() - g_consumed.load();
      if (out >= fill_ || g_emitted.load() >= total_) break;
      Sleep(1);
    }
    // What the source emitted that this sink has not finished yet, this item included.
    int64_t in_flight = g_emitted.load() - g_consumed.load();
    ctx_.Metric(step_++, {{"in_flight", static_cast<double>(in_flight)}});
    ++g_consumed;
    return Status();
  }

 private:
  const NodeContext& ctx_;
  int64_t sleep_ms_, fill_, total_;
  int64_t step_ = 0;
};

class Record : public StreamKernel {
 public:
  explicit Record(const NodeContext& ctx) : ctx_(ctx) {}
  Status Process(int input, const Batch& batch, Emitter&) override {
    WEIR_ASSIGN_OR_RETURN(const IntColumn* values, batch.Get<IntColumn>("i"));
    for (int64_t v : *values)
      ctx_.Metric(step_++, {{"i", static_cast<double>(v)}, {"input", static_cast<double>(input)}});
    return Status();
  }
  Status Finish(Emitter&) override {
    ctx_.Metric(step_, {{"finished", 1}});
    return Status();
  }

 private:
  const NodeContext& ctx_;
  int64_t step_ = 0;
};

// Stateless and slow by a varying amount per item, so concurrent calls finish out of order.
class Jitter : public StreamKernel {
 public:
  Status Process(int, const Batch& batch, Emitter& out) override {
    WEIR_ASSIGN_OR_RETURN(const IntColumn* values, batch.Get<IntColumn>("i"));
    Sleep(values->empty() ? 0 : (values->front() * 7919) % 5);
    out.Emit(batch);
    return Status();
  }
};

class Fail : public StreamKernel {
 public:
  explicit Fail(const NodeContext& ctx)
      : at_(ctx.Int("at")), throw_(ctx.String("mode") == "throw") {}
  Status Process(int, const Batch& batch, Emitter& out) override {
    if (seen_++ == at_) {
      if (throw_) throw std::runtime_error("test.Fail threw at item " + std::to_string(at_));
      return InvalidArgument("test.Fail failed at item " + std::to_string(at_));
    }
    out.Emit(batch);
    return Status();
  }

 private:
  int64_t at_;
  bool throw_;
  int64_t seen_ = 0;
};

class PassThrough : public StreamKernel {
 public:
  Status Process(int, const Batch& batch, Emitter& out) override {
    out.Emit(batch);
    return Status();
  }
};

template <typename K>
StreamKernelFactory Make() {
  return [](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
    if constexpr (std::is_constructible_v<K, const NodeContext&>) {
      return std::unique_ptr<StreamKernel>(new K(ctx));
    } else {
      (void)ctx;
      return std::unique_ptr<StreamKernel>(new K());
    }
  };
}

void RegisterTestOps(Registrar& r) {
  r.StreamOp("test.Count")
      .Doc("Emits n batches of `rows` consecutive ints in column 'i' (n < 0: forever).")
      .Output("out", "batch", "the counted rows")
      .Attr<int64_t>("n", 10, "batches to emit; negative: never stop")
      .Attr<int64_t>("rows", 1, "rows per batch", Min(1))
      .Attr<int64_t>("sleep_ms", 0, "pause before each batch", Min(0))
      .Stateful()
      .Factory(Make<Count>());
  r.StreamOp("test.SlowSink")
      .Doc("Sleeps per item and records how many test.Count items are in flight.")
      .Input("in", "batch", "items")
      .Attr<int64_t>("sleep_ms", 5, "pause per item", Min(0))
      .Attr<int64_t>("fill", 0, "wait until this many items are out before taking one", Min(0))
      .Attr<int64_t>("total", 0, "how many the source makes (stops the wait at the end)", Min(0))
      .Stateful()
      .Factory(Make<SlowSink>());
  r.StreamOp("test.Record")
      .Doc("Records every value of column 'i', in arrival order, as metrics.")
      .VariadicInput("in", "batch", "items")
      .Stateful()
      .Factory(Make<Record>());
  r.StreamOp("test.Jitter")
      .Doc("Passes items through after a pause that varies per item; runs items concurrently.")
      .Input("in", "batch", "items")
      .Output("out", "batch", "the same items")
      .Factory(Make<Jitter>());
  r.StreamOp("test.Fail")
      .Doc("Passes items through and fails at item `at`, by returning an error or by throwing.")
      .Input("in", "batch", "items")
      .Output("out", "batch", "items before the failure")
      .Attr<int64_t>("at", 0, "0-based item that fails", Min(0))
      .Attr<std::string>("mode", "status", "how to fail", OneOf{"status", "throw"})
      .Stateful()
      .Factory(Make<Fail>());
  r.StreamOp("test.Knobs")
      .Doc("Does nothing; its attrs exercise typing and validation.")
      .OptionalInput("in", "batch", "items")
      .Output("out", "batch", "the same items")
      .Output("rejected", "batch", "never used")
      .RequiredAttr<int64_t>("k", "an int in [1, 64]", Min(1), Max(64))
      .Attr<std::string>("mode", "fast", "a choice", OneOf{"fast", "slow"})
      .Attr<double>("ratio", 0.5, "a float in [0, 1]", Min(0.0), Max(1.0))
      .Attr("tags", std::vector<std::string>{}, "a list of strings")
      .Attr("sizes", std::vector<int64_t>{1, 2}, "a list of ints")
      .AttrOfType("dtype", ATTR_TYPE, "f32", "a dtype")
      .AttrOfType("shape", ATTR_SHAPE, "[2, -1]", "a shape")
      .Factory(Make<PassThrough>());
  r.StreamOp("test.UseStore")
      .Doc("Names a resource of kind test_store.")
      .Input("in", "batch", "items")
      .Output("out", "batch", "the same items")
      .AttrOfType("store", ATTR_RESOURCE, std::nullopt, "the store to use")
      .Factory(Make<PassThrough>());
  r.StreamOp("test.RunFunction")
      .Doc("Names a function (as bridging ops such as training do).")
      .Input("in", "batch", "items")
      .Output("out", "batch", "the same items")
      .AttrOfType("function", ATTR_FUNC, std::nullopt, "the function to run")
      .Factory(Make<PassThrough>());
  r.ResourceKind("test_store").Doc("A named store.").Attr<int64_t>("capacity", 8, "slots", Min(1));
  r.TensorOp("test.TensorIds")
      .Doc("A tensor op producing i64 ids.")
      .Input("x", "T", "anything")
      .Output("ids", "i64", "ids")
      .AttrOfType("T", ATTR_TYPE, "f32", "input dtype");
  r.TensorOp("test.TensorScale")
      .Doc("A tensor op taking and producing T.")
      .Input("x", "T", "values")
      .Output("y", "T", "scaled values")
      .AttrOfType("T", ATTR_TYPE, "f32", "dtype")
      .Attr<double>("factor", 1.0, "scale");
  // Two copies: one with a CUDA kernel beside the CPU one, one without a gradient.
  auto same_shape = [](ShapeContext& c) {
    c.set_output(0, c.input(0));
    return Status();
  };
  auto copy = [](KernelContext& c) {
    std::memcpy(c.output(0).raw_data(), c.input(0).Contiguous().raw_data(), c.output(0).nbytes());
    return Status();
  };
  r.TensorOp("test.CudaToo")
      .Doc("A copy with a CPU and a CUDA kernel (the CUDA one never runs in a CPU-only build).")
      .Input("x", "T")
      .Output("y", "T")
      .Shape(same_shape)
      .Kernel("cpu", copy)
      .Kernel("cuda", [](KernelContext&) { return Internal("not a real CUDA kernel"); });
  r.TensorOp("test.NoGradient")
      .Doc("A differentiable copy whose plugin forgot the gradient.")
      .Input("x", "T")
      .Output("y", "T")
      .Shape(same_shape)
      .Kernel("cpu", copy);
}

}  // namespace

WEIR_PLUGIN("test_ops", "0.0.1", RegisterTestOps)
