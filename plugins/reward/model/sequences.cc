// How reward.PreferencePairs and reward.Model turn rows into the sequences a reward model scores.
#include <algorithm>

#include "chat/chat.h"
#include "model/reward_model.h"

namespace weir::reward {

StatusOr<SequenceFormat> LoadSequenceFormat(const NodeContext& ctx) {
  SequenceFormat format;
  auto loaded = tokenizer::Tokenizer::Load(ctx.InputPath(ctx.String("tokenizer")));
  if (!loaded.ok()) return ctx.Error("tokenizer: " + loaded.status().message());
  format.tokenizer = std::move(*loaded);
  format.chat_template = ctx.String("template");
  Status formatted = rl::FormatPrompt(format.chat_template, "").status();
  if (!formatted.ok()) return ctx.Error("attr 'template': " + formatted.message());
  if (const std::string& end = ctx.String("end"); !end.empty()) {
    std::vector<int64_t> ids = format.tokenizer->Encode(end, /*specials=*/true);
    if (ids.size() != 1 || format.tokenizer->Encode(end, /*specials=*/false) == ids) {
      return ctx.Error("attr 'end': '" + end +
                       "' is not a special token of the tokenizer (use '' to append none)");
    }
    format.end = ids[0];
  }
  format.max_len = ctx.Int("max_len");
  return format;
}

StatusOr<std::vector<int64_t>> EncodeSequence(const SequenceFormat& format,
                                              const std::string& prompt,
                                              const std::string& completion, bool* truncated) {
  WEIR_ASSIGN_OR_RETURN(std::string text, rl::FormatPrompt(format.chat_template, prompt));
  std::vector<int64_t> ids = format.tokenizer->Encode(text, /*specials=*/true);
  std::vector<int64_t> tail = format.tokenizer->Encode(completion, /*specials=*/true);
  ids.insert(ids.end(), tail.begin(), tail.end());
  if (format.end >= 0) ids.push_back(format.end);
  *truncated = static_cast<int64_t>(ids.size()) > format.max_len;
  if (*truncated) ids.erase(ids.begin(), ids.end() - format.max_len);
  return ids;
}

PaddedSequences PadSequences(const std::vector<std::vector<int64_t>>& sequences, int64_t pad_id,
                             int64_t multiple, DataType last_dtype) {
  int64_t rows = static_cast<int64_t>(sequences.size()), longest = 1;
  for (const auto& s : sequences)
    longest = std::max<int64_t>(longest, static_cast<int64_t>(s.size()));
  int64_t time = (longest + multiple - 1) / multiple * multiple;
  PaddedSequences out{Tensor::Full(DT_I64, {rows, time}, static_cast<double>(pad_id)),
                      Tensor::Zeros(last_dtype, {rows, time})};
  auto* tokens = out.tokens.data<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const auto& s = sequences[static_cast<size_t>(r)];
    std::copy(s.begin(), s.end(), tokens + r * time);
    // An empty sequence (no template, completion or end) has no token to score: its row stays 0.
    if (!s.empty())
      StoreFromDouble(out.last.raw_data(), last_dtype,
                      r * time + static_cast<int64_t>(s.size()) - 1, 1.0);
  }
  return out;
}

}  // namespace weir::reward
