// Cases of nn.PagedLatentAttention for the CPU tests (paged_attention_test.cc) and the GPU ones
// (tests/gpu/attention_conformance_test.cc): sequences whose cached blocks lie scattered over the
// cache in a shuffled order, and the reference, nn.Attention over the same keys gathered densely.
#pragma once

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "weir/testing/op_check.h"

namespace weir::testing {

struct PagedProblem {
  std::string name;
  int64_t time, heads, d, dv, block_size;
  std::vector<int64_t> lengths;  // cached tokens of each sequence
  std::string attrs;             // more attrs: "scale=0.3"
  bool positive_keys = false;    // keys (and so values) in [0.25, 1]: no output cancels to ~0
  int64_t spare_blocks = 3;      // cache blocks no sequence uses
};

inline int64_t BlocksOf(const PagedProblem& p, int64_t b) {
  return (p.lengths[static_cast<size_t>(b)] + p.block_size - 1) / p.block_size;
}

// q, kv and cache are random (the case's seed); block_table and lengths fixed. Each sequence's
// blocks are a shuffled draw from the cache, and the table's unused entries are -1, which the op
// must never read.
inline OpCase PagedCase(const PagedProblem& p, DataType dtype) {
  const int64_t batch = static_cast<int64_t>(p.lengths.size());
  int64_t used = 0, max_blocks = 1;
  for (int64_t b = 0; b < batch; ++b) {
    used += BlocksOf(p, b);
    max_blocks = std::max(max_blocks, BlocksOf(p, b) + 1);
  }
  const int64_t blocks = used + p.spare_blocks;
  std::vector<int64_t> order(static_cast<size_t>(blocks));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(5));
  std::vector<double> table(static_cast<size_t>(batch * max_blocks), -1.0);
  size_t next = 0;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < BlocksOf(p, b); ++j)
      table[static_cast<size_t>(b * max_blocks + j)] = static_cast<double>(order[next++]);
  OpCase c;
  c.op = "nn.PagedLatentAttention";
  c.attrs = "value_dim=" + std::to_string(p.dv) + (p.attrs.empty() ? "" : " " + p.attrs);
  c.inputs = {{dtype, {batch, p.time, p.heads, p.d}},
              {dtype, {batch, p.time, p.d}},
              {dtype, {blocks, p.block_size, p.d}},
              {DT_I64, {batch, max_blocks}},
              {DT_I64, {batch}}};
  if (p.positive_keys) {
    std::mt19937_64 rng(11);
    std::uniform_real_distribution<double> u(0.25, 1.0);
    for (int i : {1, 2}) {
      std::vector<double>& v = c.values[i];
      v.resize(static_cast<size_t>(NumElements(c.inputs[static_cast<size_t>(i)].shape)));
      for (double& x : v) x = u(rng);
    }
  }
  c.values[3] = table;
  c.values[4] = std::vector<double>(p.lengths.begin(), p.lengths.end());
  c.no_grad = {3, 4};
  return c;
}

// nn.Attention (causal, one kv head) over sequence b of the paged case whose inputs are `in`
// (CaseInputs of PagedCase): its queries, and its cached key rows gathered through the block
// table followed by its new ones; values are the rows' first dv columns.
inline OpCase GatheredCase(const PagedProblem& p, const std::vector<Tensor>& in, int64_t b) {
  const int64_t len = p.lengths[static_cast<size_t>(b)], keys = len + p.time;
  const int64_t max_blocks = in[3].dim(1);
  std::vector<double> q, k, v;
  for (int64_t i = 0; i < p.time * p.heads * p.d; ++i)
    q.push_back(in[0].At(b * p.time * p.heads * p.d + i));
  for (int64_t j = 0; j < keys; ++j) {
    int64_t row = 0;  // flat index of key j's first element
    if (j < len) {
      auto block = static_cast<int64_t>(in[3].At(b * max_blocks + j / p.block_size));
      row = (block * p.block_size + j % p.block_size) * p.d;
    }
    const Tensor& from = j < len ? in[2] : in[1];
    if (j >= len) row = (b * p.time + j - len) * p.d;
    for (int64_t x = 0; x < p.d; ++x) k.push_back(from.At(row + x));
    for (int64_t x = 0; x < p.dv; ++x) v.push_back(from.At(row + x));
  }
  DataType dtype = in[0].dtype();
  OpCase c;
  c.op = "nn.Attention";
  c.attrs = p.attrs;
  c.inputs = {
      {dtype, {1, p.time, p.heads, p.d}}, {dtype, {1, keys, 1, p.d}}, {dtype, {1, keys, 1, p.dv}}};
  c.values = {{0, q}, {1, k}, {2, v}};
  return c;
}

}  // namespace weir::testing
