// The tiny GPT (graphs/models/gpt.pbtxt) the program tests share: grouped-query attention (2
// query heads over 1 K/V head), d_model 8, a vocabulary of 11.
#pragma once

#include <map>
#include <string>

#include "weir/attr.h"

namespace weir::testing {

inline std::map<std::string, AttrValue> TinyGptAttrs(DataType dtype, int64_t layers = 2) {
  std::map<std::string, AttrValue> a;
  auto i = [&](const char* k, int64_t v) { a[k].set_i(v); };
  i("vocab", 11);
  i("n_layers", layers);
  i("d_model", 8);
  i("n_heads", 2);
  i("n_kv_heads", 1);
  i("q_dim", 8);
  i("kv_dim", 4);
  i("d_ff", 12);
  a["init_std"].set_f(0.3);
  a["out_std"].set_f(0.3);
  a["T"].set_type(dtype);
  return a;
}

}  // namespace weir::testing
