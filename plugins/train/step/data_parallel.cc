#include "step/data_parallel.h"

#include <algorithm>

namespace weir::train {

StatusOr<std::vector<Tensor>> RowShard(const std::vector<Tensor>& inputs, int rank, int ranks) {
  if (ranks == 1) return inputs;  // one rank holds every row: no copy, any input rank
  std::vector<Tensor> out;
  for (const Tensor& t : inputs) {
    int64_t rows = t.rank() == 0 ? 0 : t.dim(0);
    if (rows == 0 || rows % ranks != 0) {
      return InvalidArgument("data_parallel=" + std::to_string(ranks) + " splits the rows of " +
                             "every input, but an input is " + t.DebugString() +
                             ": its batch size must be a multiple of " + std::to_string(ranks));
    }
    int64_t each = rows / ranks;
    out.push_back(t.Slice(0, rank * each, (rank + 1) * each).Contiguous());
  }
  return out;
}

Status CombineOverRanks(Communicator& comm, Program::Outputs& outputs) {
  double ranks = static_cast<double>(comm.size());
  auto average = [&](Tensor& t) -> Status {
    // Summed in f32 (f64 stays f64), divided once: the same on every rank.
    Tensor wide = t.dtype() == DT_F64 ? t.Contiguous() : t.To(DT_F32);
    WEIR_ASSIGN_OR_RETURN(Tensor sum, comm.AllReduce(wide, ReduceOp::kSum));
    for (int64_t i = 0; i < sum.numel(); ++i)
      StoreFromDouble(sum.raw_data(), sum.dtype(), i, sum.At(i) / ranks);
    t = sum.To(t.dtype());
    return Status();
  };
  // std::map: every rank walks the names in the same order, as the collectives require.
  for (auto& [name, g] : outputs.param_grads) WEIR_RETURN_IF_ERROR(average(g));
  for (Tensor& v : outputs.values)
    if (v.numel() == 1 && IsFloating(v.dtype())) WEIR_RETURN_IF_ERROR(average(v));
  for (auto& [name, s] : outputs.statistics) {
    WEIR_ASSIGN_OR_RETURN(Tensor sum, comm.AllReduce(s.To(DT_F32), ReduceOp::kSum));
    s = sum.To(s.dtype());
  }
  return Status();
}

void AddToSum(std::map<std::string, Tensor>& sums, const std::string& name, const Tensor& t) {
  Tensor add = t.To(DT_F32);
  auto [it, fresh] = sums.try_emplace(name, add);
  if (fresh) return;
  float* acc = it->second.data<float>();
  const float* p = add.data<float>();
  for (int64_t i = 0; i < add.numel(); ++i) acc[i] += p[i];
}

std::map<std::string, int> OptimizerShards(const std::map<std::string, Tensor>& params, int ranks) {
  std::vector<std::pair<int64_t, std::string>> by_size;
  for (const auto& [name, t] : params) by_size.emplace_back(-t.numel(), name);
  std::sort(by_size.begin(), by_size.end());
  std::vector<int64_t> load(static_cast<size_t>(ranks), 0);
  std::map<std::string, int> owner;
  for (const auto& [negative, name] : by_size) {
    int r = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[name] = r;
    load[static_cast<size_t>(r)] -= negative;
  }
  return owner;
}

}  // namespace weir::train
