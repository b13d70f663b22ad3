#include "weir/attr.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include "weir/dtype.h"
#include "weir/json.h"

namespace weir {
namespace {

bool IsKeyChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.';
}
bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Number syntax is checked by hand: libstdc++'s std::regex recurses once per character and a
// long number in a hostile file overflowed the stack.
size_t SkipDigits(std::string_view t, size_t i) {
  while (i < t.size() && t[i] >= '0' && t[i] <= '9') ++i;
  return i;
}

size_t SkipSign(std::string_view t, size_t i) {
  return i < t.size() && (t[i] == '+' || t[i] == '-') ? i + 1 : i;
}

// [+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?
bool IsNumberText(std::string_view t) {
  size_t begin = SkipSign(t, 0);
  size_t i = SkipDigits(t, begin);
  bool whole = i > begin;
  if (i < t.size() && t[i] == '.') {
    size_t fraction = i + 1;
    i = SkipDigits(t, fraction);
    if (!whole && i == fraction) return false;
  } else if (!whole) {
    return false;
  }
  if (i < t.size() && (t[i] == 'e' || t[i] == 'E')) {
    size_t exponent = SkipSign(t, i + 1);
    i = SkipDigits(t, exponent);
    if (i == exponent) return false;
  }
  return i == t.size();
}

// [+-]?\d+
bool IsIntegerText(std::string_view t) {
  size_t begin = SkipSign(t, 0);
  return begin < t.size() && SkipDigits(t, begin) == t.size();
}

class LiteralParser {
 public:
  LiteralParser(std::string_view text, const SourceLoc& start) : s_(text), start_(start) {}

  Status Error(size_t at, const std::string& message) const {
    Status s = InvalidArgument(message);
    s.At(start_.Shifted(static_cast<int>(at)));
    return s;
  }

  void SkipSpace() {
    while (pos_ < s_.size() && IsSpace(s_[pos_])) ++pos_;
  }
  bool AtEnd() const { return pos_ >= s_.size(); }
  void Advance() { ++pos_; }
  size_t pos() const { return pos_; }
  std::string_view text() const { return s_; }

  StatusOr<std::string> ParseKey() {
    size_t begin = pos_;
    while (pos_ < s_.size() && IsKeyChar(s_[pos_])) ++pos_;
    if (pos_ == begin) {
      return Error(begin, "expected an attr name (letters, digits, '_', '.'), got '" +
                              std::string(1, s_[begin]) + "'");
    }
    return std::string(s_.substr(begin, pos_ - begin));
  }

  StatusOr<Literal> ParseValue(bool in_list) {
    Literal lit;
    lit.offset = static_cast<int>(pos_);
    if (AtEnd()) return Error(pos_, "expected a value");
    char c = s_[pos_];
    if (c == '[') {
      // Lists nest by recursion: the bound keeps a hostile value from running off the end of the
      // stack (tensor literals nest once per dimension).
      if (list_depth_ == kMaxListDepth)
        return Error(pos_, "lists nest more than " + std::to_string(kMaxListDepth) + " deep");
      lit.kind = Literal::kList;
      ++pos_;
      SkipSpace();
      if (!AtEnd() && s_[pos_] == ']') {
        ++pos_;
        return lit;
      }
      ++list_depth_;
      while (true) {
        SkipSpace();
        WEIR_ASSIGN_OR_RETURN(Literal item, ParseValue(/*in_list=*/true));
        lit.items.push_back(std::move(item));
        SkipSpace();
        if (AtEnd())
          return Error(static_cast<size_t>(lit.offset), "unterminated list: missing ']'");
        if (s_[pos_] == ',') {
          ++pos_;
          continue;
        }
        if (s_[pos_] == ']') {
          ++pos_;
          --list_depth_;
          return lit;
        }
        return Error(pos_, "expected ',' or ']' in list, got '" + std::string(1, s_[pos_]) + "'");
      }
    }
    if (c == '\'' || c == '"') {
      lit.kind = Literal::kQuoted;
      size_t open = pos_++;
      while (true) {
        if (AtEnd()) return Error(open, std::string("unterminated string: missing ") + c);
        char d = s_[pos_++];
        if (d == c) break;
        if (d == '\\' && !AtEnd()) {
          char e = s_[pos_++];
          lit.text += e == 'n' ? '\n' : e == 't' ? '\t' : e;
        } else {
          lit.text += d;
        }
      }
      return lit;
    }
    if (c == '$') {
      lit.kind = Literal::kParam;
      ++pos_;
      size_t begin = pos_;
      if (pos_ < s_.size() && s_[pos_] == '(') {
        // An arithmetic expression over params, "$(n_heads * (nope + rope))": kept as text,
        // parentheses included, and evaluated where params are resolved.
        int depth = 0;
        do {
          if (s_[pos_] == '(') ++depth;
          if (s_[pos_] == ')') --depth;
          ++pos_;
        } while (depth > 0 && pos_ < s_.size());
        if (depth > 0) return Error(begin, "unterminated expression: missing ')'");
        lit.text = std::string(s_.substr(begin, pos_ - begin));
        return lit;
      }
      while (pos_ < s_.size() &&
             (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_'))
        ++pos_;
      if (pos_ == begin) return Error(begin - 1, "expected a param name after '$'");
      lit.text = std::string(s_.substr(begin, pos_ - begin));
      return lit;
    }
    size_t begin = pos_;
    while (pos_ < s_.size() && !IsSpace(s_[pos_]) &&
           !(in_list && (s_[pos_] == ',' || s_[pos_] == ']')))
      ++pos_;
    if (pos_ == begin) return Error(begin, "expected a value, got '" + std::string(1, c) + "'");
    lit.text = std::string(s_.substr(begin, pos_ - begin));
    lit.kind = IsNumberText(lit.text) ? Literal::kNumber : Literal::kWord;
    return lit;
  }

 private:
  static constexpr int kMaxListDepth = 64;
  std::string_view s_;
  SourceLoc start_;
  size_t pos_ = 0;
  int list_depth_ = 0;
};

// How a literal reads in an error message.
std::string Describe(const Literal& lit) {
  switch (lit.kind) {
    case Literal::kWord:
    case Literal::kQuoted:
      return "'" + lit.text + "'";
    default:
      return lit.ToString();
  }
}

Status Mismatch(const Literal& lit, AttrType type) {
  return InvalidArgument(std::string("expects ") + AttrTypeName(type) + ", got " + Describe(lit));
}

std::string FormatDouble(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::string out = ShortestDouble(v);
  if (out.find_first_of(".e") == std::string::npos) out += ".0";
  return out;
}

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + "'";
}

// Strings that read back as the same string stay bare (paths, names); others are quoted.
std::string BareWordOrQuote(const std::string& s) {
  bool plain = !s.empty() && !IsNumberText(s) && s != "true" && s != "false" && s != "inf" &&
               s != "-inf" && s != "nan" &&
               s.find_first_of(" \t\r\n'\"[],$\\") == std::string::npos;
  return plain ? s : Quote(s);
}

Status FillTensor(const Literal& lit, size_t depth, TensorValue* t, std::vector<int64_t>* shape,
                  bool* all_int) {
  if (lit.kind == Literal::kList) {
    int64_t n = static_cast<int64_t>(lit.items.size());
    if (shape->size() == depth) {
      shape->push_back(n);
    } else if (depth >= shape->size() || (*shape)[depth] != n) {
      return InvalidArgument("expects a rectangular tensor, got " + lit.ToString());
    }
    for (const Literal& item : lit.items)
      WEIR_RETURN_IF_ERROR(FillTensor(item, depth + 1, t, shape, all_int));
    return Status();
  }
  if (lit.kind != Literal::kNumber || depth != shape->size())
    return InvalidArgument("expects tensor (nested list of numbers), got " + lit.ToString());
  *all_int = *all_int && IsIntegerText(lit.text);
  t->add_float_val(std::strtod(lit.text.c_str(), nullptr));
  return Status();
}

std::optional<AttrType> ListElementType(AttrType type) {
  switch (type) {
    case ATTR_INT_LIST:
      return ATTR_INT;
    case ATTR_FLOAT_LIST:
      return ATTR_FLOAT;
    case ATTR_STRING_LIST:
      return ATTR_STRING;
    default:
      return std::nullopt;
  }
}

}  // namespace

std::string Literal::ToString() const {
  switch (kind) {
    case kNumber:
    case kWord:
      return text;
    case kQuoted:
      return Quote(text);
    case kParam:
      return "$" + text;
    case kList: {
      std::string out = "[";
      for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i].ToString();
      return out + "]";
    }
  }
  return text;
}

StatusOr<std::vector<AttrAssignment>> ParseAttrString(std::string_view text,
                                                      const SourceLoc& start) {
  LiteralParser p(text, start);
  std::vector<AttrAssignment> out;
  while (true) {
    p.SkipSpace();
    if (p.AtEnd()) break;
    AttrAssignment a;
    a.offset = static_cast<int>(p.pos());
    WEIR_ASSIGN_OR_RETURN(a.key, p.ParseKey());
    if (p.AtEnd() || text[p.pos()] != '=')
      return p.Error(p.pos(), "expected '=' after attr name '" + a.key + "' (write key=value)");
    p.Advance();
    if (p.AtEnd() || IsSpace(text[p.pos()]))
      return p.Error(p.pos(), "missing value after '" + a.key + "='");
    WEIR_ASSIGN_OR_RETURN(a.value, p.ParseValue(/*in_list=*/false));
    if (!p.AtEnd() && !IsSpace(text[p.pos()])) {
      return p.Error(p.pos(), "unexpected '" + std::string(1, text[p.pos()]) +
                                  "' after the value of '" + a.key +
                                  "' (quote values with spaces)");
    }
    out.push_back(std::move(a));
  }
  return out;
}

StatusOr<Literal> ParseLiteral(std::string_view text) {
  LiteralParser p(text, SourceLoc{});
  p.SkipSpace();
  WEIR_ASSIGN_OR_RETURN(Literal lit, p.ParseValue(/*in_list=*/false));
  p.SkipSpace();
  if (!p.AtEnd()) {
    return InvalidArgument("unexpected text after the value: '" +
                           std::string(text.substr(p.pos())) + "' (quote values with spaces)");
  }
  return lit;
}

const char* AttrTypeName(AttrType t) {
  switch (t) {
    case ATTR_INT:
      return "int";
    case ATTR_FLOAT:
      return "float";
    case ATTR_BOOL:
      return "bool";
    case ATTR_STRING:
      return "string";
    case ATTR_TYPE:
      return "dtype";
    case ATTR_SHAPE:
      return "shape";
    case ATTR_INT_LIST:
      return "list(int)";
    case ATTR_FLOAT_LIST:
      return "list(float)";
    case ATTR_STRING_LIST:
      return "list(string)";
    case ATTR_TENSOR:
      return "tensor";
    case ATTR_FUNC:
      return "function";
    case ATTR_RESOURCE:
      return "resource";
    default:
      return "unspecified";
  }
}

StatusOr<AttrValue> CoerceLiteral(const Literal& lit, AttrType type) {
  if (lit.kind == Literal::kParam) {
    return InvalidArgument("$" + lit.text +
                           " cannot be used here (params are resolved in graphs only)");
  }
  AttrValue v;
  bool textual = lit.kind == Literal::kWord || lit.kind == Literal::kQuoted;
  switch (type) {
    case ATTR_INT:
      if (lit.kind != Literal::kNumber || !IsIntegerText(lit.text)) return Mismatch(lit, type);
      errno = 0;
      v.set_i(std::strtoll(lit.text.c_str(), nullptr, 10));
      if (errno == ERANGE) return InvalidArgument("int out of range: " + lit.text);
      return v;
    case ATTR_FLOAT:
      if (lit.kind == Literal::kNumber ||
          (lit.kind == Literal::kWord &&
           (lit.text == "inf" || lit.text == "-inf" || lit.text == "nan"))) {
        v.set_f(std::strtod(lit.text.c_str(), nullptr));
        return v;
      }
      return Mismatch(lit, type);
    case ATTR_BOOL:
      if (lit.kind == Literal::kWord && (lit.text == "true" || lit.text == "false")) {
        v.set_b(lit.text == "true");
        return v;
      }
      return Mismatch(lit, type);
    case ATTR_STRING:
      if (!textual && lit.kind != Literal::kNumber) return Mismatch(lit, type);
      v.set_s(lit.text);
      return v;
    case ATTR_TYPE: {
      auto dt = textual ? ParseDataType(lit.text) : std::nullopt;
      if (!dt) {
        std::string names;
        for (DataType d : AllDataTypes())
          names += std::string(names.empty() ? "" : ", ") + DataTypeName(d);
        return InvalidArgument("expects dtype (one of " + names + "), got " + Describe(lit));
      }
      v.set_type(*dt);
      return v;
    }
    case ATTR_SHAPE: {
      if (lit.kind != Literal::kList) return Mismatch(lit, type);
      auto* shape = v.mutable_shape();
      for (const Literal& item : lit.items) {
        if (item.kind != Literal::kNumber || !IsIntegerText(item.text))
          return InvalidArgument("expects shape (list of ints, -1 for unknown), got " +
                                 lit.ToString());
        int64_t d = std::strtoll(item.text.c_str(), nullptr, 10);
        if (d < -1) return InvalidArgument("shape dims must be >= -1, got " + lit.ToString());
        shape->add_dim(d);
      }
      return v;
    }
    case ATTR_INT_LIST:
    case ATTR_FLOAT_LIST:
    case ATTR_STRING_LIST: {
      if (lit.kind != Literal::kList) return Mismatch(lit, type);
      auto* list = v.mutable_list();
      for (const Literal& item : lit.items) {
        auto elem = CoerceLiteral(item, *ListElementType(type));
        if (!elem.ok()) return Mismatch(lit, type);
        *list->add_value() = std::move(elem).value();
      }
      return v;
    }
    case ATTR_TENSOR: {
      TensorValue* t = v.mutable_tensor();
      std::vector<int64_t> shape;
      bool all_int = true;
      WEIR_RETURN_IF_ERROR(FillTensor(lit, 0, t, &shape, &all_int));
      for (int64_t d : shape) t->mutable_shape()->add_dim(d);
      if (all_int) {
        for (double x : t->float_val()) t->add_int_val(static_cast<int64_t>(x));
        t->clear_float_val();
        t->set_dtype(DT_I64);
      } else {
        t->set_dtype(DT_F32);
      }
      return v;
    }
    case ATTR_FUNC:
      if (!textual) return Mismatch(lit, type);
      v.set_func(lit.text);
      return v;
    case ATTR_RESOURCE:
      if (!textual) return Mismatch(lit, type);
      v.set_s(lit.text);
      return v;
    default:
      return Internal("attr has no type");
  }
}

StatusOr<std::map<std::string, AttrValue>> ParseAttrValues(std::string_view text,
                                                           const SourceLoc& start) {
  WEIR_ASSIGN_OR_RETURN(auto parsed, ParseAttrString(text, start));
  std::map<std::string, AttrValue> values;
  for (const AttrAssignment& a : parsed) {
    WEIR_ASSIGN_OR_RETURN(values[a.key], InferLiteral(a.value));
  }
  return values;
}

StatusOr<AttrValue> InferLiteral(const Literal& lit) {
  AttrValue v;
  switch (lit.kind) {
    case Literal::kNumber:
      return CoerceLiteral(lit, IsIntegerText(lit.text) ? ATTR_INT : ATTR_FLOAT);
    case Literal::kWord:
      if (lit.text == "true" || lit.text == "false") return CoerceLiteral(lit, ATTR_BOOL);
      v.set_s(lit.text);
      return v;
    case Literal::kQuoted:
      v.set_s(lit.text);
      return v;
    case Literal::kParam:
      return InvalidArgument("a param's value cannot reference another param ($" + lit.text + ")");
    case Literal::kList: {
      auto* list = v.mutable_list();
      for (const Literal& item : lit.items) {
        WEIR_ASSIGN_OR_RETURN(AttrValue elem, InferLiteral(item));
        *list->add_value() = std::move(elem);
      }
      return v;
    }
  }
  return v;
}

AttrType InferredType(const AttrValue& v) {
  switch (v.value_case()) {
    case AttrValue::kI:
      return ATTR_INT;
    case AttrValue::kF:
      return ATTR_FLOAT;
    case AttrValue::kB:
      return ATTR_BOOL;
    case AttrValue::kS:
      return ATTR_STRING;
    case AttrValue::kType:
      return ATTR_TYPE;
    case AttrValue::kShape:
      return ATTR_SHAPE;
    case AttrValue::kTensor:
      return ATTR_TENSOR;
    case AttrValue::kFunc:
      return ATTR_FUNC;
    case AttrValue::kList: {
      AttrType t = ATTR_INT_LIST;
      for (const AttrValue& e : v.list().value()) {
        AttrType et = InferredType(e);
        if (et == ATTR_STRING || et == ATTR_BOOL) return ATTR_STRING_LIST;
        if (et == ATTR_FLOAT) t = ATTR_FLOAT_LIST;
      }
      return t;
    }
    default:
      return ATTR_UNSPECIFIED;
  }
}

StatusOr<AttrValue> ConvertValue(const AttrValue& value, AttrType type) {
  // One set of typing rules: a typed value converts exactly as its written form would.
  WEIR_ASSIGN_OR_RETURN(Literal lit, ParseLiteral(FormatAttrValue(value)));
  return CoerceLiteral(lit, type);
}

Status CheckAttrConstraints(const AttrDef& def, const AttrValue& value) {
  std::vector<double> numbers;
  if (value.has_i()) numbers.push_back(static_cast<double>(value.i()));
  if (value.has_f()) numbers.push_back(value.f());
  if (value.has_list())
    for (const AttrValue& e : value.list().value()) {
      if (e.has_i()) numbers.push_back(static_cast<double>(e.i()));
      if (e.has_f()) numbers.push_back(e.f());
    }
  bool is_int = def.type() == ATTR_INT || def.type() == ATTR_INT_LIST;
  auto bound = [&](double b) {
    return is_int ? std::to_string(static_cast<int64_t>(b)) : FormatDouble(b);
  };
  for (double x : numbers) {
    bool low = def.has_minimum() && x < def.minimum();
    bool high = def.has_maximum() && x > def.maximum();
    if (!low && !high && !std::isnan(x)) continue;
    std::string range;
    if (def.has_minimum() && def.has_maximum())
      range = " in [" + bound(def.minimum()) + ", " + bound(def.maximum()) + "]";
    else if (def.has_minimum())
      range = " >= " + bound(def.minimum());
    else if (def.has_maximum())
      range = " <= " + bound(def.maximum());
    else
      continue;
    return InvalidArgument(std::string("expects ") + AttrTypeName(def.type()) + range + ", got " +
                           FormatAttrValue(value));
  }
  if (def.allowed_size() > 0) {
    std::string text = FormatAttrValue(value);
    std::string options;
    for (const AttrValue& a : def.allowed()) {
      std::string option = FormatAttrValue(a);
      if (option == text) return Status();
      options += (options.empty() ? "" : ", ") + option;
    }
    return InvalidArgument("expects one of {" + options + "}, got " + text);
  }
  return Status();
}

std::string FormatAttrValue(const AttrValue& v) {
  switch (v.value_case()) {
    case AttrValue::kI:
      return std::to_string(v.i());
    case AttrValue::kF:
      return FormatDouble(v.f());
    case AttrValue::kB:
      return v.b() ? "true" : "false";
    case AttrValue::kS:
      return BareWordOrQuote(v.s());
    case AttrValue::kType:
      return DataTypeName(v.type());
    case AttrValue::kFunc:
      return v.func();
    case AttrValue::kParam:
      return "$" + v.param();
    case AttrValue::kShape: {
      std::string out = "[";
      for (int i = 0; i < v.shape().dim_size(); ++i)
        out += (i ? ", " : "") + std::to_string(v.shape().dim(i));
      return out + "]";
    }
    case AttrValue::kList: {
      std::string out = "[";
      for (int i = 0; i < v.list().value_size(); ++i)
        out += (i ? ", " : "") + FormatAttrValue(v.list().value(i));
      return out + "]";
    }
    case AttrValue::kTensor: {
      const TensorValue& t = v.tensor();
      bool ints = t.float_val_size() == 0;
      size_t next = 0;
      // Writes the sub-tensor of dimension `depth` as nested lists.
      std::function<std::string(int)> write = [&](int depth) -> std::string {
        if (depth == t.shape().dim_size()) {
          size_t i = next++;
          return ints ? (i < static_cast<size_t>(t.int_val_size()) ? std::to_string(t.int_val(i))
                                                                   : "0")
                      : (i < static_cast<size_t>(t.float_val_size()) ? FormatDouble(t.float_val(i))
                                                                     : "0.0");
        }
        std::string out = "[";
        for (int64_t k = 0; k < t.shape().dim(depth); ++k)
          out += (k ? ", " : "") + write(depth + 1);
        return out + "]";
      };
      return write(0);
    }
    case AttrValue::VALUE_NOT_SET:
      return "<unset>";
  }
  return "";
}

bool AttrValueIsSet(const AttrValue& v) { return v.value_case() != AttrValue::VALUE_NOT_SET; }

int64_t AttrInt(const AttrValue& v) {
  CHECK(v.has_i()) << "attr is not an int: " << FormatAttrValue(v);
  return v.i();
}
double AttrFloat(const AttrValue& v) {
  CHECK(v.has_f() || v.has_i()) << "attr is not a float: " << FormatAttrValue(v);
  return v.has_f() ? v.f() : static_cast<double>(v.i());
}
bool AttrBool(const AttrValue& v) {
  CHECK(v.has_b()) << "attr is not a bool: " << FormatAttrValue(v);
  return v.b();
}
const std::string& AttrString(const AttrValue& v) {
  CHECK(v.has_s()) << "attr is not a string: " << FormatAttrValue(v);
  return v.s();
}
std::vector<int64_t> AttrIntList(const AttrValue& v) {
  std::vector<int64_t> out;
  if (v.has_shape()) return {v.shape().dim().begin(), v.shape().dim().end()};
  CHECK(v.has_list()) << "attr is not a list: " << FormatAttrValue(v);
  for (const AttrValue& e : v.list().value()) out.push_back(AttrInt(e));
  return out;
}
std::vector<double> AttrFloatList(const AttrValue& v) {
  std::vector<double> out;
  CHECK(v.has_list()) << "attr is not a list: " << FormatAttrValue(v);
  for (const AttrValue& e : v.list().value()) out.push_back(AttrFloat(e));
  return out;
}
std::vector<std::string> AttrStringList(const AttrValue& v) {
  std::vector<std::string> out;
  CHECK(v.has_list()) << "attr is not a list: " << FormatAttrValue(v);
  for (const AttrValue& e : v.list().value()) out.push_back(AttrString(e));
  return out;
}

}  // namespace weir
