#include "bpe.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <sstream>

#include "weir/json.h"

namespace weir::tokenizer {

const char* const kCl100kPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// A compiled PCRE2 pattern (UTF, Unicode properties, invalid UTF-8 allowed in subjects, JIT).
class Regex {
 public:
  static StatusOr<std::unique_ptr<Regex>> Compile(const std::string& pattern) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code =
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                      PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      return InvalidArgument("pre-tokenizer regex does not compile at offset " +
                             std::to_string(offset) + ": " +
                             reinterpret_cast<const char*>(message));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if no JIT
    auto r = std::unique_ptr<Regex>(new Regex());
    r->code_ = code;
    return r;
  }
  ~Regex() { pcre2_code_free(code_); }

  // Cuts `text` into pieces: every match, and every gap between matches.
  void Split(std::string_view text, std::vector<std::string_view>& out) const {
    thread_local std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> data(
        pcre2_match_data_create(1, nullptr), &pcre2_match_data_free);
    size_t at = 0, gap = 0;
    while (at < text.size()) {
      int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), at, 0,
                           data.get(), nullptr);
      if (rc < 0) break;
      PCRE2_SIZE* v = pcre2_get_ovector_pointer(data.get());
      if (v[0] > gap) out.push_back(text.substr(gap, v[0] - gap));
      if (v[1] > v[0]) out.push_back(text.substr(v[0], v[1] - v[0]));
      gap = v[1];
      at = v[1] > v[0] ? v[1] : v[0] + 1;  // an empty match moves on by one byte
    }
    if (gap < text.size()) out.push_back(text.substr(gap));
  }

 private:
  Regex() = default;
  pcre2_code* code_ = nullptr;
};

const char* const kDeepSeekPatterns[3] = {
    R"(\p{N}{1,3})",
    R"([\p{Han}\p{Hiragana}\p{Katakana}]+)",
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
};

PreTokenizer::PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;
PreTokenizer::~PreTokenizer() = default;

StatusOr<PreTokenizer> PreTokenizer::Make(const std::vector<std::string>& patterns) {
  PreTokenizer p;
  for (const std::string& source : patterns) {
    WEIR_ASSIGN_OR_RETURN(auto regex, Regex::Compile(source));
    p.regexes_.push_back(std::move(regex));
    p.sources_.push_back(source);
  }
  return p;
}

std::vector<std::string_view> PreTokenizer::Split(std::string_view text) const {
  std::vector<std::string_view> pieces = {text}, next;
  for (const auto& regex : regexes_) {
    next.clear();
    for (std::string_view p : pieces) regex->Split(p, next);
    pieces.swap(next);
  }
  return pieces;
}

namespace {

// GPT-2's byte-to-character map that Hugging Face byte-level vocabularies are written in:
// printable bytes stand for themselves, the others for code points from 256 on.
std::vector<int> ByteToCodePoint() {
  std::vector<int> map(256, -1);
  for (int b = 0; b < 256; ++b)
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) map[b] = b;
  int next = 256;
  for (int b = 0; b < 256; ++b)
    if (map[static_cast<size_t>(b)] < 0) map[static_cast<size_t>(b)] = next++;
  return map;
}

// The bytes a vocabulary string stands for, or an error naming it.
StatusOr<std::string> VocabBytes(const std::string& token) {
  static const std::vector<int> to_code = ByteToCodePoint();
  static const std::unordered_map<int, char> to_byte = [] {
    std::unordered_map<int, char> m;
    for (int b = 0; b < 256; ++b) m[to_code[static_cast<size_t>(b)]] = static_cast<char>(b);
    return m;
  }();
  std::string out;
  for (size_t i = 0; i < token.size();) {
    auto c = static_cast<unsigned char>(token[i]);
    int len = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    int cp = len == 1 ? c : c & (0xff >> (len + 1));
    for (int k = 1; k < len && i + static_cast<size_t>(k) < token.size(); ++k)
      cp = (cp << 6) | (static_cast<unsigned char>(token[i + static_cast<size_t>(k)]) & 0x3f);
    auto it = to_byte.find(cp);
    if (it == to_byte.end())
      return InvalidArgument("vocabulary token '" + token + "' is not in the byte-level alphabet");
    out.push_back(it->second);
    i += static_cast<size_t>(len);
  }
  return out;
}

constexpr std::string_view kBase64Alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";

std::string Base64Decode(std::string_view in) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  int bits = 0, acc = 0;
  for (char c : in) {
    int v = value(c);
    if (v < 0) continue;  // '=' padding
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

// A token id written as a JSON number: an integer that fits an int64 (SetToken bounds it further).
StatusOr<int64_t> TokenId(const google::protobuf::Value& v) {
  double d = v.number_value();
  if (!(d >= -9.2e18 && d <= 9.2e18) || d != static_cast<double>(static_cast<int64_t>(d)))
    return InvalidArgument("token id " + JsonValueText(v) + " is not an integer");
  return static_cast<int64_t>(d);
}

// The field `key` of a JSON object, or null.
const google::protobuf::Value* Field(const google::protobuf::Struct& s, const std::string& key) {
  auto it = s.fields().find(key);
  return it == s.fields().end() ? nullptr : &it->second;
}

std::string PairKey(std::string_view a, std::string_view b) {
  std::string key(a);
  key.push_back('\0');
  key.append(b);
  return key;
}

}  // namespace

Tokenizer::Tokenizer() {
  static std::atomic<uint64_t> next{0};
  serial_ = next++;
}

Tokenizer::~Tokenizer() = default;

std::string ByteLevelString(std::string_view bytes) {
  static const std::vector<int> to_code = ByteToCodePoint();
  std::string out;
  for (char c : bytes) {
    int cp = to_code[static_cast<unsigned char>(c)];
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else {
      out.push_back(static_cast<char>(0xc0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    }
  }
  return out;
}

Status Tokenizer::SetToken(int64_t id, std::string bytes, bool ordinary) {
  if (id < 0 || id >= id_limit_) {
    return InvalidArgument(
        "token id " + std::to_string(id) + " is out of range" +
        (id < 0 ? "" : ": the file holds " + std::to_string(file_tokens_) + " tokens"));
  }
  if (tokens_.size() <= static_cast<size_t>(id)) tokens_.resize(static_cast<size_t>(id) + 1);
  // Encoding finds ids by bytes and decoding bytes by id: one id with two spellings would decode
  // to the other one.
  const std::string& known = tokens_[static_cast<size_t>(id)];
  if (!known.empty() && known != bytes)
    return InvalidArgument("token id " + std::to_string(id) + " is given to two different tokens");
  if (ordinary) ids_[bytes] = id;
  tokens_[static_cast<size_t>(id)] = std::move(bytes);
  return Status();
}

StatusOr<std::shared_ptr<Tokenizer>> Tokenizer::Load(const std::filesystem::path& file,
                                                     const std::string& tiktoken_pattern) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return NotFound("cannot read tokenizer " + file.string());
  // The largest real ones (a 200k vocabulary with its merges) are tens of MB.
  constexpr std::uintmax_t kMaxTokenizerBytes = 512 << 20;
  std::error_code size_error;
  if (std::uintmax_t size = std::filesystem::file_size(file, size_error);
      !size_error && size > kMaxTokenizerBytes)
    return InvalidArgument("tokenizer " + file.string() + " is " + std::to_string(size) +
                           " bytes; a tokenizer file is at most " +
                           std::to_string(kMaxTokenizerBytes) + " bytes");
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  auto t = std::shared_ptr<Tokenizer>(new Tokenizer());
  auto fail = [&](const std::string& why) {
    return InvalidArgument("tokenizer " + file.string() + ": " + why);
  };
  size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '{') {
    auto parsed = ParseJsonObject(text);
    if (!parsed.ok()) return fail(parsed.status().message());
    const google::protobuf::Struct& json = *parsed;
    const auto& f = json.fields();
    if (!f.count("model") || f.at("model").struct_value().fields().count("type") == 0 ||
        f.at("model").struct_value().fields().at("type").string_value() != "BPE")
      return fail("only BPE models are supported (model.type)");
    const auto& model = f.at("model").struct_value().fields();
    if (!model.count("vocab")) return fail("model has no vocab");
    const auto& vocab = model.at("vocab").struct_value().fields();
    const auto* added = Field(json, "added_tokens");
    t->SetFileTokens(static_cast<int64_t>(vocab.size()) +
                     (added != nullptr ? added->list_value().values_size() : 0));
    // In token order: protobuf maps iterate in a random order, and an error must name the same
    // token every run.
    std::map<std::string, google::protobuf::Value> sorted(vocab.begin(), vocab.end());
    for (const auto& [token, id] : sorted) {
      WEIR_ASSIGN_OR_RETURN(std::string bytes, VocabBytes(token));
      auto number = TokenId(id);
      Status set = number.ok() ? t->SetToken(*number, bytes, true) : number.status();
      if (!set.ok()) return fail("vocabulary token '" + token + "': " + set.message());
    }
    if (model.count("merges")) {
      const auto& merges = model.at("merges").list_value().values();
      for (int m = 0; m < merges.size(); ++m) {
        std::string a, b;
        if (merges[m].has_list_value()) {  // ["a", "b"]
          const auto& pair = merges[m].list_value().values();
          if (pair.size() != 2) return fail("merge " + std::to_string(m) + " is not a pair");
          a = pair[0].string_value();
          b = pair[1].string_value();
        } else {  // "a b"
          const std::string& s = merges[m].string_value();
          size_t space = s.find(' ', 1);
          if (space == std::string::npos) return fail("merge '" + s + "' has no space");
          a = s.substr(0, space);
          b = s.substr(space + 1);
        }
        WEIR_ASSIGN_OR_RETURN(std::string ab, VocabBytes(a));
        WEIR_ASSIGN_OR_RETURN(std::string bb, VocabBytes(b));
        // As Hugging Face's tokenizers: both parts and what they make are vocabulary tokens.
        for (const auto& [spelled, bytes] : {std::pair{a, ab}, {b, bb}, {a + b, ab + bb}}) {
          if (!t->ids_.count(bytes))
            return fail("merge " + std::to_string(m) + " ('" + a + " " + b + "'): '" + spelled +
                        "' is not in the vocabulary");
        }
        t->merges_.emplace(PairKey(ab, bb), m);
      }
    }
    if (added != nullptr) {
      for (const auto& v : added->list_value().values()) {
        const auto* content = Field(v.struct_value(), "content");
        const auto* id = Field(v.struct_value(), "id");
        if (content == nullptr || id == nullptr)
          return fail("added token " + JsonValueText(v) + " needs a content and an id");
        auto number = TokenId(*id);
        Status set =
            number.ok() ? t->SetToken(*number, content->string_value(), false) : number.status();
        if (!set.ok())
          return fail("added token '" + content->string_value() + "': " + set.message());
        t->specials_.push_back({content->string_value(), *number});
      }
    }
    // Pre-tokenizer: Split regexes in sequence, and ByteLevel's GPT-2 regex when use_regex.
    std::vector<std::string> patterns;
    std::function<Status(const google::protobuf::Struct&)> walk =
        [&](const google::protobuf::Struct& p) -> Status {
      const auto& pf = p.fields();
      std::string type = pf.count("type") ? pf.at("type").string_value() : "";
      if (type == "Sequence") {
        const auto* steps = Field(p, "pretokenizers");
        if (steps == nullptr) return fail("a Sequence pre-tokenizer needs pretokenizers");
        for (const auto& sub : steps->list_value().values())
          WEIR_RETURN_IF_ERROR(walk(sub.struct_value()));
      } else if (type == "Split") {
        const auto* pattern = Field(p, "pattern");
        const auto* regex = pattern != nullptr ? Field(pattern->struct_value(), "Regex") : nullptr;
        if (regex == nullptr) return fail("only Regex Split patterns are supported");
        patterns.push_back(regex->string_value());
      } else if (type == "ByteLevel") {
        if (!pf.count("use_regex") || pf.at("use_regex").bool_value())
          patterns.push_back(kGpt2Pattern);
      } else if (!type.empty()) {
        return fail("pre-tokenizer '" + type + "' is not supported");
      }
      return Status();
    };
    if (f.count("pre_tokenizer") && f.at("pre_tokenizer").has_struct_value())
      WEIR_RETURN_IF_ERROR(walk(f.at("pre_tokenizer").struct_value()));
    WEIR_ASSIGN_OR_RETURN(t->pre_, PreTokenizer::Make(patterns));
  } else {
    t->SetFileTokens(std::count(text.begin(), text.end(), '\n') + 1);
    std::istringstream lines(text);
    int line_no = 0;
    for (std::string line; std::getline(lines, line);) {
      ++line_no;
      if (line.empty()) continue;
      size_t space = line.find(' ');
      if (space == std::string::npos)
        return fail("line " + std::to_string(line_no) + " is not '<base64> <rank>'");
      std::string_view token = std::string_view(line).substr(0, space);
      if (token.empty() || token.find_first_not_of(kBase64Alphabet) != std::string_view::npos)
        return fail("line " + std::to_string(line_no) + ": '" + std::string(token) +
                    "' is not base64");
      std::string_view number = std::string_view(line).substr(space + 1);
      int64_t rank = -1;
      auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), rank);
      Status set = ec == std::errc() && end == number.data() + number.size()
                       ? t->SetToken(rank, Base64Decode(token), true)
                       : InvalidArgument("'" + std::string(number) + "' is not a rank");
      if (!set.ok()) return fail("line " + std::to_string(line_no) + ": " + set.message());
    }
    std::string pattern = tiktoken_pattern == "cl100k" ? kCl100kPattern
                          : tiktoken_pattern == "gpt2" ? kGpt2Pattern
                                                       : tiktoken_pattern;
    WEIR_ASSIGN_OR_RETURN(t->pre_, PreTokenizer::Make({pattern}));
  }
  std::sort(t->specials_.begin(), t->specials_.end(),
            [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  for (int b = 0; b < 256; ++b) {
    if (!t->ids_.count(std::string(1, static_cast<char>(b))))
      return fail("the vocabulary lacks the single byte " + std::to_string(b) +
                  ": byte-level BPE needs all 256");
  }
  return t;
}

int64_t Tokenizer::PairRank(std::string_view left, std::string_view right) const {
  if (!merges_.empty()) {
    auto it = merges_.find(PairKey(left, right));
    return it == merges_.end() ? -1 : it->second;
  }
  std::string joined(left);
  joined.append(right);
  auto it = ids_.find(joined);
  return it == ids_.end() ? -1 : it->second;
}

// Standard BPE: start from single bytes, merge the adjacent pair of lowest rank until no pair
// merges.
void Tokenizer::EncodePiece(std::string_view piece, std::vector<int64_t>& out) const {
  auto whole = ids_.find(std::string(piece));
  if (whole != ids_.end() && merges_.empty()) {  // tiktoken's shortcut: a piece that is a token
    out.push_back(whole->second);
    return;
  }
  std::vector<std::string_view> parts;
  for (size_t i = 0; i < piece.size(); ++i) parts.push_back(piece.substr(i, 1));
  while (parts.size() > 1) {
    int64_t best = std::numeric_limits<int64_t>::max();
    size_t at = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      int64_t r = PairRank(parts[i], parts[i + 1]);
      if (r >= 0 && r < best) {
        best = r;
        at = i;
      }
    }
    if (best == std::numeric_limits<int64_t>::max()) break;
    parts[at] = std::string_view(parts[at].data(), parts[at].size() + parts[at + 1].size());
    parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(at) + 1);
  }
  for (std::string_view p : parts) {
    auto it = ids_.find(std::string(p));
    if (it != ids_.end()) {
      out.push_back(it->second);
    } else {  // a merge whose result the vocabulary lacks: keep its bytes
      for (char c : p) out.push_back(ids_.at(std::string(1, c)));
    }
  }
}

void Tokenizer::EncodeOrdinary(std::string_view text, std::vector<int64_t>& out) const {
  // Pieces (words) repeat: each thread remembers the ids of the pieces it encoded, per tokenizer
  // (by serial number: an address may be reused by a later tokenizer), forgetting them when a
  // memo grows past its bound.
  thread_local std::unordered_map<uint64_t, std::unordered_map<std::string, std::vector<int64_t>>>
      memos;
  if (memos.size() > 8 && !memos.count(serial_)) memos.clear();
  auto& memo = memos[serial_];
  std::vector<int64_t> ids;
  for (std::string_view p : pre_.Split(text)) {
    std::string key(p);
    auto it = memo.find(key);
    if (it == memo.end()) {
      ids.clear();
      EncodePiece(p, ids);
      if (memo.size() >= 200000) memo.clear();
      it = memo.emplace(std::move(key), ids).first;
    }
    out.insert(out.end(), it->second.begin(), it->second.end());
  }
}

std::vector<int64_t> Tokenizer::Encode(std::string_view text, bool specials) const {
  std::vector<int64_t> out;
  size_t start = 0;
  if (specials && !specials_.empty()) {
    for (size_t i = 0; i < text.size();) {
      bool found = false;
      for (const auto& [content, id] : specials_) {
        if (!content.empty() && text.compare(i, content.size(), content) == 0) {
          EncodeOrdinary(text.substr(start, i - start), out);
          out.push_back(id);
          i += content.size();
          start = i;
          found = true;
          break;
        }
      }
      if (!found) ++i;
    }
  }
  EncodeOrdinary(text.substr(start), out);
  return out;
}

StatusOr<std::string> Tokenizer::Decode(const std::vector<int64_t>& ids) const {
  std::string out;
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size())
      return InvalidArgument("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                             std::to_string(vocab_size()) + ")");
    out += tokens_[static_cast<size_t>(id)];
  }
  return out;
}

}  // namespace weir::tokenizer
