// The reward model's pieces in the reward plugin: the Bradley-Terry loss (a tensor op), the
// preference-pair batches it trains on and reward.Model, which scores rows with a trained model
// (stream ops). The graph functions DeepseekV3Reward and DeepseekV3RewardScore
// (graphs/models/deepseek_v3_reward.pbtxt) put a scalar head on the model's final hidden state.
//
// Training and scoring must see a completion the same way, so both encode it here: the chat
// template around the prompt, the completion, then the end token, and the score is read at the
// sequence's last token (the end token), whose hidden state has attended to everything before it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bpe.h"
#include "weir/registrar.h"
#include "weir/stream_kernel.h"
#include "weir/tensor.h"

namespace weir::reward {

void RegisterBradleyTerryLoss(Registrar& r);
void RegisterPreferencePairs(Registrar& r);
void RegisterRewardModel(Registrar& r);

// The attrs reward.PreferencePairs and reward.Model share, read by LoadSequenceFormat and
// PadSequences: tokenizer, template, end, max_len, pad_id, pad_to_multiple.
void SequenceAttrs(OpBuilder& op);

// How a (prompt, completion) row becomes the token sequence a reward model scores.
struct SequenceFormat {
  std::shared_ptr<tokenizer::Tokenizer> tokenizer;
  std::string chat_template;  // holds {prompt} once
  int64_t end = -1;           // the id appended after the completion; -1: none
  int64_t max_len = 512;      // longer sequences keep their last max_len tokens
};

// Reads the attrs `tokenizer`, `template`, `end` and `max_len` of a node (reward.PreferencePairs,
// reward.Model); an error names the attr.
StatusOr<SequenceFormat> LoadSequenceFormat(const NodeContext& ctx);

// The ids of template(prompt) + completion + end. Special tokens written in the text (the chat
// roles, R1's tags) are tokens, as the policy writes them. A sequence longer than max_len keeps
// its last max_len tokens: what tells completions apart is at their end, where the score is read.
StatusOr<std::vector<int64_t>> EncodeSequence(const SequenceFormat& format,
                                              const std::string& prompt,
                                              const std::string& completion, bool* truncated);

// Right-pads sequences into tokens [rows, T] (i64, `pad_id` after each sequence) and last
// [rows, T] (`last_dtype`, 1 at each sequence's last token, else 0). T is the longest sequence
// rounded up to a multiple of `multiple`, so batches of similar lengths share one compiled program.
struct PaddedSequences {
  Tensor tokens;
  Tensor last;
};
PaddedSequences PadSequences(const std::vector<std::vector<int64_t>>& sequences, int64_t pad_id,
                             int64_t multiple, DataType last_dtype);

}  // namespace weir::reward
