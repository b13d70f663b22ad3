// Resolving a loaded graph: function expansion, attr typing, edges, port types, order.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <set>
#include <tuple>

#include "weir/dtype.h"
#include "weir/graph.h"

namespace weir {
namespace {

constexpr int kMaxCallDepth = 32;
// Far above any real model (DeepSeek-V3 has 61 layers); a typo like repeat=6100000 fails fast.
constexpr int64_t kMaxRepeat = 100000;
// Nested repeats multiply (a function that repeats itself twice, 32 calls deep, is 2^32 copies),
// so the whole graph gets the same budget of copies; and a call whose copies all fail stops
// early, since every error has been said by then.
constexpr size_t kMaxErrorsBeforeStopping = 100;

// Variables visible to $references: a function's attrs (and $repeat_index), then the graph's
// params.
struct Scope {
  std::map<std::string, AttrValue> vars;
  const Scope* parent = nullptr;

  const AttrValue* Find(const std::string& name) const {
    for (const Scope* s = this; s != nullptr; s = s->parent) {
      auto it = s->vars.find(name);
      if (it != s->vars.end()) return &it->second;
    }
    return nullptr;
  }
  std::vector<std::string> Names() const {
    std::vector<std::string> out;
    for (const Scope* s = this; s != nullptr; s = s->parent)
      for (const auto& [k, v] : s->vars) out.push_back(k);
    return out;
  }
};

// Evaluates "$(...)" expressions: + - * /, parentheses, sqrt() and ln() over numbers and params
// (int, float or bool). Integers stay integers while every division is exact.
class Expression {
 public:
  Expression(std::string_view text, const Scope& scope) : s_(text), scope_(scope) {}

  StatusOr<AttrValue> Evaluate() {
    WEIR_ASSIGN_OR_RETURN(Value v, Sum());
    Skip();
    if (pos_ != s_.size()) return Fail("unexpected '" + std::string(1, s_[pos_]) + "'");
    AttrValue out;
    if (v.is_int) {
      out.set_i(v.i);
    } else {
      out.set_f(v.f);
    }
    return out;
  }

 private:
  struct Value {
    bool is_int = true;
    int64_t i = 0;
    double f = 0;
    double d() const { return is_int ? static_cast<double>(i) : f; }
  };
  static Value Int(int64_t i) { return {true, i, 0}; }
  static Value Float(double f) { return {false, 0, f}; }

  Status Fail(const std::string& what) const {
    return InvalidArgument("in expression $" + std::string(s_) + ": " + what);
  }
  void Skip() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool Eat(char c) {
    Skip();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  StatusOr<Value> Sum() {
    WEIR_ASSIGN_OR_RETURN(Value v, Product());
    while (true) {
      bool plus = Eat('+');
      if (!plus && !Eat('-')) return v;
      WEIR_ASSIGN_OR_RETURN(Value r, Product());
      if (v.is_int && r.is_int) {
        if (plus ? __builtin_add_overflow(v.i, r.i, &v.i) : __builtin_sub_overflow(v.i, r.i, &v.i))
          return Fail("integer overflow");
      } else {
        v = Float(plus ? v.d() + r.d() : v.d() - r.d());
      }
    }
  }
  StatusOr<Value> Product() {
    WEIR_ASSIGN_OR_RETURN(Value v, Factor());
    while (true) {
      bool times = Eat('*');
      if (!times && !Eat('/')) return v;
      WEIR_ASSIGN_OR_RETURN(Value r, Factor());
      if (times && v.is_int && r.is_int) {
        if (__builtin_mul_overflow(v.i, r.i, &v.i)) return Fail("integer overflow");
      } else if (times) {
        v = Float(v.d() * r.d());
      } else if (r.d() == 0) {
        return Fail("division by zero");
      } else if (v.is_int && r.is_int && r.i == -1) {  // the one quotient that can overflow
        if (__builtin_sub_overflow(int64_t{0}, v.i, &v.i)) return Fail("integer overflow");
      } else {
        v = v.is_int && r.is_int && v.i % r.i == 0 ? Int(v.i / r.i) : Float(v.d() / r.d());
      }
    }
  }
  // Parentheses and signs nest by recursion: the bound keeps a hostile expression from running
  // off the end of the stack.
  StatusOr<Value> Factor() {
    if (nesting_ >= kMaxNesting)
      return Fail("nested more than " + std::to_string(kMaxNesting) + " deep");
    ++nesting_;
    StatusOr<Value> v = Primary();
    --nesting_;
    return v;
  }
  StatusOr<Value> Primary() {
    Skip();
    if (Eat('-')) {
      WEIR_ASSIGN_OR_RETURN(Value v, Factor());
      if (v.is_int && __builtin_sub_overflow(int64_t{0}, v.i, &v.i))
        return Fail("integer overflow");
      return v.is_int ? v : Float(-v.f);
    }
    if (Eat('(')) {
      WEIR_ASSIGN_OR_RETURN(Value v, Sum());
      if (!Eat(')')) return Fail("missing ')'");
      return v;
    }
    size_t begin = pos_;
    if (pos_ < s_.size() &&
        (std::isdigit(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '.')) {
      while (
          pos_ < s_.size() &&
          (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '.' ||
           ((s_[pos_] == '-' || s_[pos_] == '+') && (s_[pos_ - 1] == 'e' || s_[pos_ - 1] == 'E'))))
        ++pos_;
      std::string text(s_.substr(begin, pos_ - begin));
      char* end = nullptr;
      if (text.find_first_of(".eE") == std::string::npos) {
        int64_t i = std::strtoll(text.c_str(), &end, 10);
        if (*end == '\0') return Int(i);
      } else {
        double f = std::strtod(text.c_str(), &end);
        if (*end == '\0') return Float(f);
      }
      return Fail("'" + text + "' is not a number");
    }
    while (pos_ < s_.size() &&
           (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_'))
      ++pos_;
    if (pos_ == begin) {
      return Fail(pos_ < s_.size() ? "unexpected '" + std::string(1, s_[pos_]) + "'"
                                   : "it ends too early");
    }
    std::string name(s_.substr(begin, pos_ - begin));
    if (Eat('(')) {
      WEIR_ASSIGN_OR_RETURN(Value arg, Sum());
      if (!Eat(')')) return Fail("missing ')'");
      if (name == "sqrt" && arg.d() >= 0) return Float(std::sqrt(arg.d()));
      if (name == "ln" && arg.d() > 0) return Float(std::log(arg.d()));
      if (name == "sqrt" || name == "ln") return Fail(name + " of " + std::to_string(arg.d()));
      return Fail("unknown function '" + name + "' (there are sqrt and ln)");
    }
    const AttrValue* v = scope_.Find(name);
    if (v == nullptr)
      return Fail("unknown param '" + name + "'" + SuggestClosest(name, scope_.Names()));
    switch (v->value_case()) {
      case AttrValue::kI:
        return Int(v->i());
      case AttrValue::kF:
        return Float(v->f());
      case AttrValue::kB:
        return Int(v->b() ? 1 : 0);
      default:
        return Fail("param '" + name + "' is " + FormatAttrValue(*v) + ", not a number");
    }
  }

  static constexpr int kMaxNesting = 200;
  std::string_view s_;
  const Scope& scope_;
  size_t pos_ = 0;
  int nesting_ = 0;
};

bool IsExpression(const Literal& lit) {
  return lit.kind == Literal::kParam && !lit.text.empty() && lit.text[0] == '(';
}

// "cpu" or "cuda", then optionally ":N". Not a std::regex: libstdc++'s recurses once per
// character and overflows the stack on a long device string.
bool ValidDevice(std::string_view device) {
  if (device.empty()) return true;
  if (device.starts_with("cpu")) {
    device.remove_prefix(3);
  } else if (device.starts_with("cuda")) {
    device.remove_prefix(4);
  } else {
    return false;
  }
  if (device.empty()) return true;
  return device.size() > 1 && device[0] == ':' &&
         std::all_of(device.begin() + 1, device.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// The output endpoints of an expanded function call, by output name and index.
struct CallOutputs {
  std::vector<std::string> names;
  std::vector<Endpoint> sources;
};

class Resolver {
 public:
  Resolver(Graph& graph, const OpRegistry& ops) : graph_(graph), ops_(ops) {
    for (const Param& p : graph_.params) params_.vars[p.name] = p.value;
  }

  Status Run() {
    ResolveResources();
    std::vector<Node> nodes;
    ExpandSpecs(graph_.node_specs, "", params_, {}, 0, nodes);
    CheckFunctionsStandalone();
    for (const Node& n : nodes) {
      if (n.entry != nullptr && n.entry->def.kind() == OpDef::TENSOR) {
        Fail(InvalidArgument("tensor op '" + n.op +
                             "' cannot run as a stream node; put it in a function and run "
                             "that function with a stream op")
                 .At(n.op_loc)
                 .InNode(n.name, n.op));
      }
    }
    // Edges are checked even when some nodes failed, so one run reports every problem.
    Link(nodes);
    if (errors_.empty()) graph_.nodes = Order(std::move(nodes));
    // Report in file order, as a compiler would.
    std::stable_sort(errors_.begin(), errors_.end(), [](const Status& a, const Status& b) {
      return std::tie(a.loc().file, a.loc().line, a.loc().col) <
             std::tie(b.loc().file, b.loc().line, b.loc().col);
    });
    return Status::Join(errors_);
  }

 private:
  void Fail(Status s) {
    if (!s.node().empty()) failed_.insert(s.node());
    std::string text = s.ToString();
    if (seen_errors_.insert(text).second) errors_.push_back(std::move(s));
  }

  // Types a written value for an attr of `type`, resolving $references in `scope`.
  StatusOr<AttrValue> TypeValue(const WrittenAttr& w, AttrType type, const Scope& scope) {
    if (IsExpression(w.value)) {
      auto v = Expression(w.value.text, scope).Evaluate();
      if (v.ok()) v = ConvertValue(*v, type);
      if (!v.ok()) return Status(v.status()).At(w.value_loc);
      return v;
    }
    if (w.value.kind == Literal::kParam) {
      const AttrValue* v = scope.Find(w.value.text);
      if (v == nullptr) {
        return InvalidArgument("refers to unknown param '$" + w.value.text + "'" +
                               SuggestClosest(w.value.text, scope.Names()))
            .At(w.value_loc);
      }
      auto converted = ConvertValue(*v, type);
      if (!converted.ok()) {
        return InvalidArgument(converted.status().message() + " (from $" + w.value.text + ")")
            .At(w.value_loc);
      }
      return converted;
    }
    WEIR_ASSIGN_OR_RETURN(Literal lit,
                          Substitute(w.value, scope, w.value_loc.Shifted(-w.value.offset)));
    auto typed = CoerceLiteral(lit, type);
    if (!typed.ok()) return Status(typed.status()).At(w.value_loc);
    return typed;
  }

  // Replaces $references nested in lists ("shape=[0, 0, $n_heads, -1]") by their values.
  // `at` is where the attr string starts (literal offsets count from there).
  StatusOr<Literal> Substitute(const Literal& lit, const Scope& scope, const SourceLoc& at) {
    if (IsExpression(lit)) {
      auto v = Expression(lit.text, scope).Evaluate();
      if (!v.ok()) return Status(v.status()).At(at.Shifted(lit.offset));
      auto parsed = ParseLiteral(FormatAttrValue(*v));
      if (!parsed.ok()) return Status(parsed.status()).At(at.Shifted(lit.offset));
      return *parsed;
    }
    if (lit.kind == Literal::kParam) {
      const AttrValue* v = scope.Find(lit.text);
      SourceLoc where = at.Shifted(lit.offset);
      if (v == nullptr) {
        return InvalidArgument("refers to unknown param '$" + lit.text + "'" +
                               SuggestClosest(lit.text, scope.Names()))
            .At(where);
      }
      auto parsed = ParseLiteral(FormatAttrValue(*v));
      if (!parsed.ok()) return Status(parsed.status()).At(where);
      return *parsed;
    }
    Literal out = lit;
    if (lit.kind == Literal::kQuoted) return Interpolate(lit, scope, at);
    for (Literal& item : out.items) {
      WEIR_ASSIGN_OR_RETURN(item, Substitute(item, scope, at));
    }
    return out;
  }

  // `${name}` inside a quoted string is the param's value as written back ('${runs}/shards',
  // 'beta=${beta} epsilon=${epsilon}'); a lone `$` stays as it is, since strings hold prices and
  // LaTeX.
  StatusOr<Literal> Interpolate(const Literal& lit, const Scope& scope, const SourceLoc& at) {
    Literal out = lit;
    out.text.clear();
    for (size_t i = 0; i < lit.text.size();) {
      size_t open = lit.text.find("${", i);
      if (open == std::string::npos) {
        out.text += lit.text.substr(i);
        break;
      }
      out.text += lit.text.substr(i, open - i);
      size_t close = lit.text.find('}', open);
      SourceLoc where = at.Shifted(lit.offset);
      if (close == std::string::npos)
        return InvalidArgument("'${' without a closing '}' in '" + lit.text + "'").At(where);
      std::string name = lit.text.substr(open + 2, close - open - 2);
      const AttrValue* v = scope.Find(name);
      if (v == nullptr) {
        return InvalidArgument("refers to unknown param '${" + name + "}'" +
                               SuggestClosest(name, scope.Names()))
            .At(where);
      }
      out.text += v->value_case() == AttrValue::kS ? v->s() : FormatAttrValue(*v);
      i = close + 1;
    }
    return out;
  }

  // Types written attrs against a schema's attr list, fills defaults, checks constraints.
  // Problems go to `errors`, one Status each.
  std::vector<std::pair<std::string, AttrValue>> TypeAttrs(
      const google::protobuf::RepeatedPtrField<AttrDef>& defs,
      const std::vector<WrittenAttr>& written, const Scope& scope, const SourceLoc& owner_loc,
      const std::string& what, std::vector<Status>& errors) {
    std::vector<std::string> names;
    for (const AttrDef& d : defs) names.push_back(d.name());
    std::map<std::string, const WrittenAttr*> given;
    for (const WrittenAttr& w : written) {
      auto it = std::find(names.begin(), names.end(), w.key);
      if (it == names.end()) {
        std::string known;
        for (const std::string& n : names) known += (known.empty() ? "" : ", ") + n;
        errors.push_back(
            InvalidArgument("unknown attr '" + w.key + "'" + SuggestClosest(w.key, names) + " (" +
                            what + (known.empty() ? " takes no attrs)" : " takes: " + known + ")"))
                .At(w.loc));
        continue;
      }
      if (given.count(w.key)) {
        errors.push_back(InvalidArgument("attr '" + w.key + "' is set twice (first at " +
                                         given[w.key]->loc.ToString() + ")")
                             .At(w.loc));
        continue;
      }
      given[w.key] = &w;
    }
    std::vector<std::pair<std::string, AttrValue>> out;
    for (const AttrDef& d : defs) {
      auto it = given.find(d.name());
      if (it == given.end()) {
        if (!AttrValueIsSet(d.default_value())) {
          errors.push_back(InvalidArgument("missing required attr '" + d.name() + "' (" +
                                           AttrTypeName(d.type()) + ": " + d.doc() + ")")
                               .At(owner_loc));
          continue;
        }
        out.emplace_back(d.name(), d.default_value());
        continue;
      }
      auto value = TypeValue(*it->second, d.type(), scope);
      if (value.ok()) {
        Status c = CheckAttrConstraints(d, *value);
        if (!c.ok()) value = c.At(it->second->value_loc);
      }
      if (!value.ok()) {
        errors.push_back(Status(value.status()).InAttr(d.name()));
        continue;
      }
      out.emplace_back(d.name(), *value);
    }
    return out;
  }

  void ResolveResources() {
    for (ResourceSpec& r : graph_.resources) {
      const ResourceKindEntry* kind = ops_.FindResourceKind(r.kind);
      if (kind == nullptr) {
        Fail(InvalidArgument("resource '" + r.name + "': unknown resource kind '" + r.kind + "'" +
                             SuggestClosest(r.kind, ops_.ResourceKindNames()))
                 .At(r.loc));
        continue;
      }
      std::vector<Status> errors;
      r.resolved_attrs = TypeAttrs(kind->def.attr(), r.attrs, params_, r.loc,
                                   "resource kind '" + r.kind + "'", errors);
      for (Status& e : errors) Fail(e.Prepend("resource '" + r.name + "'"));
    }
  }

  // Checks every function on its own, with its default attrs, so errors inside a function that
  // no stream node calls directly (tensor functions run by bridging ops) are found at load.
  void CheckFunctionsStandalone() {
    for (const auto& [name, f] : graph_.functions) {
      if (expanded_.count(name)) continue;  // already checked with its real attrs
      Instantiate(f, {}, f.name);
    }
  }

 public:
  // Expands one function with its arguments left open; errors go to errors_.
  FunctionInstance Instantiate(const FunctionSpec& f, const std::map<std::string, AttrValue>& attrs,
                               const std::string& prefix) {
    FunctionInstance instance;
    instance.inputs = f.inputs;
    Scope scope;
    scope.parent = &params_;
    for (const WrittenAttr& a : f.attrs) {
      auto v = InferLiteral(a.value);
      if (v.ok()) scope.vars[a.key] = *v;
    }
    for (const auto& [key, value] : attrs) {
      auto it = scope.vars.find(key);
      if (it == scope.vars.end()) {
        std::vector<std::string> names;
        for (const WrittenAttr& a : f.attrs) names.push_back(a.key);
        Fail(InvalidArgument("function '" + f.name + "' has no attr '" + key + "'" +
                             SuggestClosest(key, names))
                 .At(f.loc));
        continue;
      }
      auto converted = ConvertValue(value, InferredType(it->second));
      if (!converted.ok()) {
        Fail(Status(converted.status())
                 .Prepend("function '" + f.name + "' attr '" + key + "'")
                 .At(f.loc));
        continue;
      }
      it->second = *converted;
    }
    scope.vars["repeat_index"].set_i(0);
    std::map<std::string, Endpoint> args;
    for (size_t i = 0; i < f.inputs.size(); ++i) {
      Endpoint e;
      e.node = f.inputs[i];
      e.external = true;
      e.arg = static_cast<int>(i);
      args[f.inputs[i]] = e;
    }
    std::vector<Node> nodes;
    size_t errors_before = errors_.size();
    ExpandSpecs(f.nodes, prefix, scope, args, 1, nodes);
    std::set<std::string> siblings;
    for (const NodeSpec& n : f.nodes) siblings.insert(n.name);
    std::vector<Endpoint> outputs;
    for (const FunctionSpec::Output& out : f.outputs) {
      if (!siblings.count(out.source.node) && !args.count(out.source.node)) {
        Fail(InvalidArgument("function '" + f.name + "' output '" + out.name +
                             "' refers to no node or argument named '" + out.source.node + "'")
                 .At(out.source.loc));
        continue;
      }
      auto followed = Follow(MapEndpoint(out.source, prefix, siblings, args));
      if (!followed.ok()) {
        Fail(followed.status());
        continue;
      }
      outputs.push_back(*followed);
    }
    if (errors_.size() != errors_before) return instance;
    Link(nodes);
    if (errors_.size() != errors_before) return instance;
    instance.nodes = Order(std::move(nodes));
    for (size_t i = 0; i < outputs.size(); ++i) {
      const Endpoint& e = outputs[i];
      FunctionInstance::Output out;
      out.name = f.outputs[i].name;
      if (e.external) {
        out.node = -1 - e.arg;
      } else {
        for (size_t n = 0; n < instance.nodes.size(); ++n)
          if (instance.nodes[n].name == e.node) out.node = static_cast<int>(n);
        const Node& from = instance.nodes.at(static_cast<size_t>(out.node));
        out.port = OutputIndex(from, e.port);
        if (out.port < 0) {
          Fail(NotFound("function '" + f.name + "' output '" + out.name + "': node '" + from.name +
                        "' (op '" + from.op + "') has no output port '" + e.port + "'")
                   .At(f.outputs[i].source.loc));
          continue;
        }
      }
      instance.outputs.push_back(out);
    }
    return instance;
  }

  const std::vector<Status>& errors() const { return errors_; }

 private:
  // Maps an endpoint written inside a scope to the expanded graph's names.
  Endpoint MapEndpoint(const Endpoint& e, const std::string& prefix,
                       const std::set<std::string>& siblings,
                       const std::map<std::string, Endpoint>& args) {
    auto arg = args.find(e.node);
    if (arg != args.end() && !siblings.count(e.node)) {
      Endpoint out = arg->second;
      out.control = e.control;
      out.loc = e.loc;
      if (!e.port.empty()) out.port = e.port;  // a repeated call's previous output
      return out;
    }
    Endpoint out = e;
    if (!prefix.empty() && siblings.count(e.node)) out.node = prefix + "." + e.node;
    return out;
  }

  void ExpandSpecs(const std::vector<NodeSpec>& specs, const std::string& prefix,
                   const Scope& scope, const std::map<std::string, Endpoint>& args, int depth,
                   std::vector<Node>& out) {
    std::set<std::string> siblings;
    std::map<std::string, const NodeSpec*> first;
    for (const NodeSpec& s : specs) {
      if (first.count(s.name)) {
        Fail(AlreadyExists("duplicate node name '" + s.name + "' (first defined at " +
                           first[s.name]->loc.ToString() + ")")
                 .At(s.name_loc)
                 .InNode(Qualified(prefix, s.name), s.op));
        continue;
      }
      first[s.name] = &s;
      siblings.insert(s.name);
    }
    for (const NodeSpec& written : specs) {
      if (first[written.name] != &written) continue;
      std::string name = Qualified(prefix, written.name);
      // `op: "$ffn"`: the op or function to call is a string param (a model's dense or MoE
      // feed-forward, its low-rank or direct query projection).
      NodeSpec chosen;
      if (written.op.starts_with("$")) {
        const AttrValue* v = scope.Find(written.op.substr(1));
        if (v == nullptr || v->value_case() != AttrValue::kS) {
          Fail(InvalidArgument(
                   "op " + written.op + " needs a string param naming an op or a " + "function" +
                   (v == nullptr ? "; there is none" : ", it is " + FormatAttrValue(*v)))
                   .At(written.op_loc)
                   .InNode(name, written.op));
          continue;
        }
        chosen = written;
        chosen.op = v->s();
      }
      const NodeSpec& s = written.op.starts_with("$") ? chosen : written;
      std::vector<Endpoint> inputs;
      for (const Endpoint& e : s.inputs) {
        if ((depth > 0 || !prefix.empty()) && !siblings.count(e.node) && !args.count(e.node)) {
          Fail(InvalidArgument("input '" + e.ToString() + "': no node or argument named '" +
                               e.node + "' in this function")
                   .At(e.loc)
                   .InNode(name, s.op));
          continue;
        }
        inputs.push_back(MapEndpoint(e, prefix, siblings, args));
      }
      if (!ValidDevice(s.device)) {
        Fail(InvalidArgument("device '" + s.device + "' is not 'cpu', 'cpu:N', 'cuda' or 'cuda:N'")
                 .At(s.device_loc)
                 .InNode(name, s.op));
        continue;
      }
      auto fn = graph_.functions.find(s.op);
      if (fn != graph_.functions.end()) {
        ExpandCall(s, fn->second, prefix, name, inputs, scope, depth, out);
        continue;
      }
      if (s.repeat != 0) {
        Fail(InvalidArgument("repeat applies to function calls only; '" + s.op + "' is an op")
                 .At(s.repeat_loc)
                 .InNode(name, s.op));
      }
      const OpEntry* entry = ops_.Find(s.op);
      if (entry == nullptr) {
        std::vector<std::string> candidates = ops_.OpNames();
        for (const auto& [fname, f] : graph_.functions) candidates.push_back(fname);
        Fail(NotFound("unknown op '" + s.op + "'" + SuggestClosest(s.op, candidates))
                 .At(s.op_loc)
                 .InNode(name, s.op));
        continue;
      }
      std::vector<Status> errors;
      auto attrs = TypeAttrs(entry->def.attr(), s.attrs, scope, s.loc, "op '" + s.op + "'", errors);
      for (Status& e : errors) Fail(e.InNode(name, s.op));
      if (!errors.empty()) continue;
      Node n;
      n.name = name;
      n.op = s.op;
      n.device = s.device;
      n.doc = s.doc;
      n.stage = s.stage;
      n.in_flight = s.in_flight;
      n.loc = s.loc;
      n.op_loc = s.op_loc;
      n.entry = entry;
      n.attrs = std::move(attrs);
      for (const Endpoint& e : inputs) {
        Node::Input in;
        in.written = e;
        n.inputs.push_back(in);
      }
      for (const WrittenAttr& w : s.attrs) CheckReference(n, w);
      bool fed =
          std::any_of(inputs.begin(), inputs.end(), [](const Endpoint& e) { return !e.control; });
      if (n.in_flight > 0 && (fed || depth > 0)) {
        Fail(InvalidArgument("in_flight bounds a source's items; this node has inputs")
                 .At(s.loc)
                 .InNode(name, s.op));
      }
      out.push_back(std::move(n));
    }
  }

  // Function and resource attrs must name something the graph defines.
  void CheckReference(const Node& n, const WrittenAttr& w) {
    const AttrValue* v = n.FindAttr(w.key);
    if (v == nullptr) return;
    for (const AttrDef& d : n.entry->def.attr()) {
      if (d.name() != w.key) continue;
      if (d.type() == ATTR_FUNC && !graph_.functions.count(v->func())) {
        std::vector<std::string> names;
        for (const auto& [k, f] : graph_.functions) names.push_back(k);
        Fail(NotFound("names unknown function '" + v->func() + "'" +
                      SuggestClosest(v->func(), names))
                 .At(w.value_loc)
                 .InAttr(w.key)
                 .InNode(n.name, n.op));
      }
      // An empty resource name is "none", for ops whose resource is optional (their default).
      if (d.type() == ATTR_RESOURCE && !v->s().empty()) {
        std::vector<std::string> names;
        for (const ResourceSpec& r : graph_.resources) names.push_back(r.name);
        if (std::find(names.begin(), names.end(), v->s()) == names.end()) {
          Fail(NotFound("names unknown resource '" + v->s() + "'" + SuggestClosest(v->s(), names))
                   .At(w.value_loc)
                   .InAttr(w.key)
                   .InNode(n.name, n.op));
        }
      }
    }
  }

  static std::string Qualified(const std::string& prefix, const std::string& name) {
    return prefix.empty() ? name : prefix + "." + name;
  }

  void ExpandCall(const NodeSpec& s, const FunctionSpec& f, const std::string& caller_prefix,
                  const std::string& name, const std::vector<Endpoint>& inputs, const Scope& scope,
                  int depth, std::vector<Node>& out) {
    auto fail = [&](Status st) { Fail(st.InNode(name, s.op)); };
    if (depth >= kMaxCallDepth) {
      fail(InvalidArgument("function calls nest deeper than " + std::to_string(kMaxCallDepth) +
                           " (does function '" + f.name + "' call itself?)")
               .At(s.op_loc));
      return;
    }
    // `repeat: N` in the node, or `attr: "repeat=$n_layers"` to take the count from a param.
    int64_t repeat = s.repeat;
    SourceLoc repeat_loc = s.repeat_loc;
    bool none = false;  // attr repeat=0: no copies, the call's outputs are its inputs
    // `attr: "inline=true"`: the function's nodes take the caller's names instead of names under
    // the call's, so a function that wraps a model (a loss head around it) shares the model's
    // parameter names and loads its checkpoints.
    bool inlined = false;
    for (const WrittenAttr& w : s.attrs) {
      if (w.key != "inline") continue;
      auto v = TypeValue(w, ATTR_BOOL, scope);
      if (!v.ok()) {
        fail(Status(v.status()).InAttr("inline"));
        return;
      }
      inlined = v->b();
    }
    for (const WrittenAttr& w : s.attrs) {
      if (w.key != "repeat") continue;
      if (s.repeat != 0) {
        fail(InvalidArgument("repeat is given both as a field and as an attr").At(w.loc));
        return;
      }
      auto v = TypeValue(w, ATTR_INT, scope);
      if (v.ok() && v->i() < 0) {
        v = InvalidArgument("expects int >= 0, got " + std::to_string(v->i())).At(w.value_loc);
      }
      if (v.ok() && v->i() == 0) none = true;
      if (!v.ok()) {
        fail(Status(v.status()).InAttr("repeat"));
        return;
      }
      repeat = v->i();
      repeat_loc = w.value_loc;
    }
    if (repeat < 0) {
      fail(InvalidArgument("repeat must be >= 0, got " + std::to_string(repeat)).At(repeat_loc));
      return;
    }
    if (inlined && (repeat > 0 || none)) {
      fail(InvalidArgument("inline=true and repeat cannot be combined: the copies would share "
                           "their names")
               .At(repeat_loc));
      return;
    }
    std::vector<Endpoint> data;
    std::vector<Endpoint> controls;
    for (const Endpoint& e : inputs) (e.control ? controls : data).push_back(e);
    if (data.size() != f.inputs.size()) {
      fail(InvalidArgument("function '" + f.name + "' takes " + std::to_string(f.inputs.size()) +
                           " inputs, got " + std::to_string(data.size()))
               .At(s.loc));
      return;
    }
    if ((repeat > 0 || none) && f.outputs.size() < f.inputs.size()) {
      fail(InvalidArgument("repeat feeds each copy's outputs into the next copy's inputs, but "
                           "function '" +
                           f.name + "' has " + std::to_string(f.inputs.size()) + " inputs and " +
                           std::to_string(f.outputs.size()) + " outputs")
               .At(repeat_loc));
      return;
    }
    // The function's attrs: defaults, then the call's values typed like the defaults.
    Scope base;
    base.parent = &params_;
    std::vector<std::string> attr_names;
    for (const WrittenAttr& a : f.attrs) {
      auto v = InferLiteral(a.value);
      if (!v.ok()) {
        fail(Status(v.status()).At(a.value_loc));
        return;
      }
      base.vars[a.key] = *v;
      attr_names.push_back(a.key);
    }
    for (const WrittenAttr& w : s.attrs) {
      if (w.key == "repeat" || w.key == "inline") continue;
      auto it = base.vars.find(w.key);
      if (it == base.vars.end() || w.key == "repeat_index") {
        fail(InvalidArgument("unknown attr '" + w.key + "'" + SuggestClosest(w.key, attr_names) +
                             " (function '" + f.name + "' takes: " +
                             [&] {
                               std::string k;
                               for (const auto& n : attr_names) k += (k.empty() ? "" : ", ") + n;
                               return k.empty() ? std::string("no attrs") : k;
                             }() +
                             ")")
                 .At(w.loc));
        return;
      }
      auto v = TypeValue(w, InferredType(it->second), scope);
      if (!v.ok()) {
        fail(Status(v.status()).InAttr(w.key));
        return;
      }
      it->second = *v;
    }
    expanded_.insert(f.name);
    if (none) {
      CallOutputs outs;
      for (size_t i = 0; i < f.outputs.size(); ++i) {
        outs.names.push_back(f.outputs[i].name);
        if (i < data.size()) outs.sources.push_back(data[i]);
      }
      calls_[name] = outs;
      return;
    }
    int64_t copies = repeat > 0 ? repeat : 1;
    if (copies > kMaxRepeat) {
      fail(InvalidArgument("repeat " + std::to_string(copies) + " exceeds the limit of " +
                           std::to_string(kMaxRepeat))
               .At(repeat_loc));
      return;
    }
    copies_ += copies;
    if (copies_ > kMaxRepeat) {
      fail(InvalidArgument("the graph's function calls expand to more than " +
                           std::to_string(kMaxRepeat) + " copies (nested repeats multiply)")
               .At(repeat_loc));
      return;
    }
    std::vector<Endpoint> current = data;
    for (int64_t k = 0; k < copies && errors_.size() < kMaxErrorsBeforeStopping; ++k) {
      std::string copy = repeat > 0 ? name + "." + std::to_string(k) : name;
      const std::string& scope_prefix = inlined ? caller_prefix : copy;
      Scope local = base;
      local.vars["repeat_index"].set_i(k);
      std::map<std::string, Endpoint> args;
      for (size_t i = 0; i < f.inputs.size(); ++i) args[f.inputs[i]] = current[i];
      size_t first_new = out.size();
      ExpandSpecs(f.nodes, scope_prefix, local, args, depth + 1, out);
      for (size_t i = first_new; i < out.size(); ++i) {
        Node& n = out[i];
        if (n.device.empty()) n.device = s.device;
        if (n.stage == 0) n.stage = s.stage;
        // The call's control inputs hold back every node of the call.
        for (const Endpoint& c : controls) {
          Node::Input in;
          in.written = c;
          n.inputs.push_back(in);
        }
      }
      std::set<std::string> siblings;
      for (const NodeSpec& ns : f.nodes) siblings.insert(ns.name);
      CallOutputs outs;
      for (const FunctionSpec::Output& o : f.outputs) {
        outs.names.push_back(o.name);
        outs.sources.push_back(MapEndpoint(o.source, scope_prefix, siblings, args));
      }
      calls_[copy] = outs;
      current.clear();
      for (size_t i = 0; i < f.inputs.size() && i < outs.sources.size(); ++i) {
        Endpoint e;
        e.node = copy;
        e.port = std::to_string(i);
        current.push_back(e);
      }
      if (k == copies - 1 && copy != name) calls_[name] = outs;
    }
  }

  // Follows endpoints that name expanded function calls to the node that really produces them.
  StatusOr<Endpoint> Follow(Endpoint e) const {
    for (int hops = 0; hops < 4 * kMaxCallDepth; ++hops) {
      auto it = calls_.find(e.node);
      if (it == calls_.end()) return e;
      const CallOutputs& outs = it->second;
      if (e.control) {
        // A control edge on a call waits for the producer of the call's first output.
        if (outs.sources.empty()) return e;
        Endpoint next = outs.sources[0];
        next.control = true;
        next.loc = e.loc;
        e = next;
        continue;
      }
      int index = -1;
      if (e.port.empty()) index = 0;
      for (size_t i = 0; i < outs.names.size(); ++i)
        if (outs.names[i] == e.port) index = static_cast<int>(i);
      if (index < 0 && !e.port.empty() && std::all_of(e.port.begin(), e.port.end(), ::isdigit))
        index = std::stoi(e.port);
      if (index < 0 || index >= static_cast<int>(outs.sources.size())) {
        std::string names;
        for (const std::string& n : outs.names) names += (names.empty() ? "" : ", ") + n;
        return InvalidArgument("input '" + e.ToString() + "': function call '" + e.node +
                               "' has no output '" + e.port +
                               "' (outputs: " + (names.empty() ? "none" : names) + ")")
            .At(e.loc);
      }
      SourceLoc loc = e.loc;
      e = outs.sources[index];
      e.loc = loc;
    }
    return InvalidArgument("function outputs refer to each other in a loop").At(e.loc);
  }

  static std::string PortType(const Node& n, const PortDef& p) {
    const AttrValue* v = n.FindAttr(p.type());
    if (v != nullptr && v->has_type()) return DataTypeName(v->type());
    return p.type();
  }

  static int NumOutputs(const Node& n) {
    return weir::NumOutputs(n.entry->def, [&](const std::string& a) { return n.FindAttr(a); });
  }

  // The index of output `port` (a name or a number; empty: 0) of node n, or -1.
  static int OutputIndex(const Node& n, const std::string& port) {
    if (port.empty()) return NumOutputs(n) > 0 ? 0 : -1;
    const auto& outs = n.entry->def.output();
    for (int p = 0; p < outs.size(); ++p)
      if (outs[p].name() == port) return p;
    if (port.size() > 9 || !std::all_of(port.begin(), port.end(), ::isdigit)) return -1;
    int index = std::stoi(port);
    return index < NumOutputs(n) ? index : -1;
  }

  static bool Compatible(const Node& from, const std::string& out_type, const Node& to,
                         const std::string& in_type) {
    bool from_stream = from.entry->def.kind() == OpDef::STREAM;
    bool to_stream = to.entry->def.kind() == OpDef::STREAM;
    if (from_stream != to_stream) return false;
    if (out_type == in_type) return true;
    if (from_stream) return out_type == "batch" || in_type == "batch";
    // Tensor ports: an unresolved type variable (not a dtype) matches anything.
    return !ParseDataType(out_type) || !ParseDataType(in_type);
  }

  void Link(std::vector<Node>& nodes) {
    std::map<std::string, int> index;
    for (size_t i = 0; i < nodes.size(); ++i) {
      auto [it, fresh] = index.emplace(nodes[i].name, static_cast<int>(i));
      if (!fresh) {
        Fail(AlreadyExists("duplicate node name '" + nodes[i].name + "' (first defined at " +
                           nodes[it->second].loc.ToString() + ")")
                 .At(nodes[i].loc)
                 .InNode(nodes[i].name, nodes[i].op));
      }
    }
    std::vector<std::string> names;
    for (const Node& n : nodes) names.push_back(n.name);
    for (Node& n : nodes) {
      if (failed_.count(n.name)) continue;  // reported already; its edges would only add noise
      auto fail = [&](Status s) { Fail(s.InNode(n.name, n.op)); };
      std::vector<Node::Input> data;
      int slot = 0;
      const auto& ports = n.entry->def.input();
      for (Node::Input& in : n.inputs) {
        auto followed = Follow(in.written);
        if (!followed.ok()) {
          fail(followed.status());
          ++slot;  // the input is there, only wrong: do not also report it missing
          continue;
        }
        Endpoint e = *followed;
        if (e.external) {
          if (e.control) continue;
          // A function argument: its producer is outside the function.
          in.node = -1 - e.arg;
          in.slot = slot++;
          data.push_back(in);
          continue;
        }
        auto it = index.find(e.node);
        if (it == index.end() && failed_.count(e.node)) {
          ++slot;  // the producer failed to resolve and was reported already
          continue;
        }
        if (it == index.end()) {
          fail(NotFound("input '" + in.written.ToString() + "': no node named '" + e.node + "'" +
                        SuggestClosest(e.node, names))
                   .At(in.written.loc));
          ++slot;
          continue;
        }
        const Node& from = nodes[it->second];
        if (e.control) {
          n.controls.push_back(it->second);
          continue;
        }
        const auto& outs = from.entry->def.output();
        int port = OutputIndex(from, e.port);
        if (port < 0) {
          std::string list;
          for (const PortDef& p : outs) {
            list += (list.empty() ? "" : ", ") + p.name();
            if (p.variadic()) list += " ×" + std::to_string(NumOutputs(from) - outs.size() + 1);
          }
          fail(NotFound("input '" + in.written.ToString() + "': node '" + from.name + "' (op '" +
                        from.op + "') has no output port '" + e.port +
                        "' (outputs: " + (list.empty() ? "none" : list) + ")")
                   .At(in.written.loc));
          ++slot;
          continue;
        }
        if (slot >= ports.size() && !(ports.size() > 0 && ports.rbegin()->variadic())) {
          ++slot;
          continue;  // counted below
        }
        int in_port = std::min(slot, ports.size() - 1);
        const PortDef& out_port = OutputPort(from.entry->def, port);
        std::string out_type = PortType(from, out_port);
        std::string in_type = PortType(n, ports[in_port]);
        if (!Compatible(from, out_type, n, in_type)) {
          fail(InvalidArgument("port type mismatch: input " + std::to_string(slot) + " ('" +
                               ports[in_port].name() + "') expects " + in_type + ", got " +
                               out_type + " from '" + from.name + ":" +
                               (out_port.variadic() ? std::to_string(port) : out_port.name()) + "'")
                   .At(in.written.loc));
        }
        in.node = it->second;
        in.port = port;
        in.slot = slot;
        data.push_back(in);
        ++slot;
      }
      int required = 0;
      bool variadic = ports.size() > 0 && ports.rbegin()->variadic();
      for (const PortDef& p : ports) required += p.optional() ? 0 : 1;
      if (slot > ports.size() && !variadic) {
        fail(InvalidArgument("takes at most " + std::to_string(ports.size()) + " inputs, got " +
                             std::to_string(slot))
                 .At(n.loc));
      } else if (slot < required) {
        fail(InvalidArgument("missing input '" + ports[slot].name() + "' (input " +
                             std::to_string(slot) + " of " + std::to_string(ports.size()) + ")")
                 .At(n.loc));
      }
      n.inputs = std::move(data);
    }
  }

  // Stable topological order (Kahn); a cycle is reported with its path.
  std::vector<Node> Order(std::vector<Node> nodes) {
    size_t n = nodes.size();
    std::vector<std::vector<int>> succ(n);
    std::vector<int> indegree(n, 0);
    for (size_t i = 0; i < n; ++i) {
      std::vector<int> preds;
      for (const Node::Input& in : nodes[i].inputs) preds.push_back(in.node);
      for (int c : nodes[i].controls) preds.push_back(c);
      for (int p : preds) {
        if (p < 0) continue;
        succ[p].push_back(static_cast<int>(i));
        ++indegree[i];
      }
    }
    std::set<int> ready;
    for (size_t i = 0; i < n; ++i)
      if (indegree[i] == 0) ready.insert(static_cast<int>(i));
    std::vector<int> order;
    while (!ready.empty()) {
      int i = *ready.begin();
      ready.erase(ready.begin());
      order.push_back(i);
      for (int s : succ[i])
        if (--indegree[s] == 0) ready.insert(s);
    }
    if (order.size() != n) {
      // Walk predecessors among the nodes left until one repeats: that is a cycle.
      int start = 0;
      while (indegree[start] == 0) ++start;
      std::vector<int> path;
      std::map<int, size_t> at;
      int cur = start;
      while (!at.count(cur)) {
        at[cur] = path.size();
        path.push_back(cur);
        int next = -1;
        for (const Node::Input& in : nodes[cur].inputs)
          if (in.node >= 0 && indegree[in.node] > 0) next = in.node;
        for (int c : nodes[cur].controls)
          if (indegree[c] > 0) next = c;
        cur = next;
      }
      std::vector<int> cycle(path.begin() + at[cur], path.end());
      std::reverse(cycle.begin(), cycle.end());
      // Start at the node written first, so the message reads in file order.
      std::rotate(cycle.begin(), std::min_element(cycle.begin(), cycle.end()), cycle.end());
      std::string text;
      for (int c : cycle) text += nodes[c].name + " -> ";
      text += nodes[cycle[0]].name;
      const Node& first = nodes[cycle[0]];
      Fail(InvalidArgument("cycle: " + text).At(first.loc).InNode(first.name, first.op));
      return nodes;
    }
    std::vector<int> new_index(n);
    for (size_t k = 0; k < n; ++k) new_index[order[k]] = static_cast<int>(k);
    std::vector<Node> sorted;
    for (int i : order) {
      Node node = std::move(nodes[i]);
      for (Node::Input& in : node.inputs)
        if (in.node >= 0) in.node = new_index[in.node];
      for (int& c : node.controls) c = new_index[c];
      sorted.push_back(std::move(node));
    }
    return sorted;
  }

  Graph& graph_;
  const OpRegistry& ops_;
  Scope params_;
  std::map<std::string, CallOutputs> calls_;
  std::set<std::string> expanded_;  // functions called from the stream level
  std::set<std::string> failed_;    // nodes that were reported and left out
  std::vector<Status> errors_;
  std::set<std::string> seen_errors_;
  int64_t copies_ = 0;  // function copies expanded so far, against kMaxRepeat
};

}  // namespace

Status ResolveGraph(Graph& graph, const OpRegistry& ops) {
  Resolver resolver(graph, ops);
  return resolver.Run();
}

StatusOr<FunctionInstance> InstantiateFunction(const Graph& graph, const std::string& name,
                                               const std::map<std::string, AttrValue>& attrs,
                                               const OpRegistry& ops, const std::string& prefix) {
  auto it = graph.functions.find(name);
  if (it == graph.functions.end()) {
    std::vector<std::string> names;
    for (const auto& [n, f] : graph.functions) names.push_back(n);
    return NotFound("graph " + graph.file.string() + " has no function '" + name + "'" +
                    SuggestClosest(name, names));
  }
  // The resolver only reads the graph; it is not const because whole-graph resolution fills it.
  Resolver resolver(const_cast<Graph&>(graph), ops);
  FunctionInstance instance = resolver.Instantiate(it->second, attrs, prefix);
  WEIR_RETURN_IF_ERROR(Status::Join(resolver.errors()));
  return instance;
}

GraphDef ToResolvedGraphDef(const Graph& graph) {
  GraphDef def;
  def.set_name(graph.name);
  def.set_doc(graph.doc);
  def.set_format_version(kGraphFormatVersion);
  std::error_code ec;
  def.set_input_dir(std::filesystem::absolute(graph.input_dir, ec).lexically_normal().string());
  for (const std::string& p : graph.plugins) def.add_plugin(p);
  for (const Param& p : graph.params) def.add_param(p.name + "=" + FormatAttrValue(p.value));
  for (const ResourceSpec& r : graph.resources) {
    ResourceDef* rd = def.add_resource();
    rd->set_name(r.name);
    rd->set_kind(r.kind);
    rd->set_doc(r.doc);
    for (const auto& [k, v] : r.resolved_attrs) rd->add_attr(k + "=" + FormatAttrValue(v));
  }
  for (const auto& [name, f] : graph.functions) *def.add_function() = f.def;
  for (const Node& n : graph.nodes) {
    NodeDef* nd = def.add_node();
    nd->set_name(n.name);
    nd->set_op(n.op);
    nd->set_device(n.device);
    nd->set_stage(n.stage);
    nd->set_in_flight(n.in_flight);
    nd->set_doc(n.doc);
    for (const Node::Input& in : n.inputs) {
      const Node& from = graph.nodes[in.node];
      nd->add_input(from.name + ":" + from.entry->def.output(in.port).name());
    }
    for (int c : n.controls) nd->add_input("^" + graph.nodes[c].name);
    for (const auto& [k, v] : n.attrs) nd->add_attr(k + "=" + FormatAttrValue(v));
  }
  return def;
}

}  // namespace weir
