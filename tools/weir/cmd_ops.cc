#include <google/protobuf/util/json_util.h>

#include <iostream>
#include <sstream>

#include "args.h"
#include "commands.h"
#include "weir/attr.h"
#include "weir/dtype.h"
#include "weir/plugin_loader.h"

namespace weir::cli {

namespace {

constexpr char kHelp[] = R"(usage: weir ops [--json|--markdown] [OP]

Lists every registered op (or just OP) with the plugin that registered it, its inputs and
outputs, its attrs with types, defaults, bounds and docs, and its kernels by device and dtype.

Options:
  --json       the schemas as JSON (an OpList), for tools
  --markdown   a Markdown reference
)";

std::string Constraint(const AttrDef& a) {
  std::string out;
  if (a.has_minimum() && a.has_maximum()) {
    out = "in [" + FormatAttrValue(ToAttrValue(a.minimum())) + ", " +
          FormatAttrValue(ToAttrValue(a.maximum())) + "]";
  } else if (a.has_minimum()) {
    out = ">= " + FormatAttrValue(ToAttrValue(a.minimum()));
  } else if (a.has_maximum()) {
    out = "<= " + FormatAttrValue(ToAttrValue(a.maximum()));
  }
  if (a.allowed_size() > 0) {
    out += out.empty() ? "one of " : ", one of ";
    for (int i = 0; i < a.allowed_size(); ++i)
      out += (i ? "|" : "") + FormatAttrValue(a.allowed(i));
  }
  if (a.type() == ATTR_INT) {
    // Integer bounds read better without a decimal point.
    for (std::string dot = ".0"; out.find(dot) != std::string::npos;) out.erase(out.find(dot), 2);
  }
  return out;
}

std::string Default(const AttrDef& a) {
  return AttrValueIsSet(a.default_value()) ? FormatAttrValue(a.default_value()) : "required";
}

std::string Kernels(const OpDef& op) {
  std::string out;
  for (const KernelDef& k : op.kernel()) {
    out += (out.empty() ? "" : ", ") + k.device();
    if (k.dtype_size() > 0) {
      out += "(";
      for (int i = 0; i < k.dtype_size(); ++i)
        out += (i ? " " : "") + std::string(DataTypeName(k.dtype(i)));
      out += ")";
    }
  }
  return out.empty() ? "none" : out;
}

std::string Port(const PortDef& p) {
  std::string out = p.name() + ": " + p.type();
  if (p.optional()) out += " (optional)";
  if (p.variadic())
    out +=
        p.count_attr().empty() ? " (variadic)" : " (variadic: attr " + p.count_attr() + " of them)";
  if (!p.doc().empty()) out += " - " + p.doc();
  return out;
}

void PrintText(const OpDef& op, std::ostream& out) {
  out << op.name() << "  (" << (op.kind() == OpDef::STREAM ? "stream" : "tensor")
      << (op.stateful() ? ", stateful" : "") << ", plugin " << op.plugin() << ")\n";
  out << "  " << op.doc() << "\n";
  for (const PortDef& p : op.input()) out << "  input   " << Port(p) << "\n";
  for (const PortDef& p : op.output()) out << "  output  " << Port(p) << "\n";
  for (const AttrDef& a : op.attr()) {
    std::string c = Constraint(a);
    out << "  attr    " << a.name() << ": " << AttrTypeName(a.type()) << " = " << Default(a)
        << (c.empty() ? "" : "  [" + c + "]") << " - " << a.doc() << "\n";
  }
  for (const std::string& p : op.param())
    out << "  param   " << p << " (learned; after the inputs)\n";
  if (op.kind() == OpDef::TENSOR)
    out << "  grad    " << (op.has_gradient() ? "yes" : "no")
        << (op.cheap() ? ", cheap to recompute" : "") << "\n";
  out << "  kernels " << Kernels(op) << "\n";
}

void PrintMarkdown(const OpDef& op, std::ostream& out) {
  out << "### `" << op.name() << "`\n\n" << op.doc() << "\n\n";
  out << "*" << (op.kind() == OpDef::STREAM ? "stream" : "tensor") << " op"
      << (op.stateful() ? ", stateful" : "") << "; kernels: " << Kernels(op);
  for (const std::string& p : op.param()) out << "; parameter `" << p << "`";
  if (op.has_gradient()) out << "; differentiable";
  out << "*\n\n";
  if (op.input_size() + op.output_size() > 0) {
    out << "| port | type | doc |\n|---|---|---|\n";
    for (const PortDef& p : op.input())
      out << "| in `" << p.name() << "` | " << p.type() << " | " << p.doc() << " |\n";
    for (const PortDef& p : op.output()) {
      out << "| out `" << p.name() << "`" << (p.variadic() ? " ×`" + p.count_attr() + "`" : "")
          << " | " << p.type() << " | " << p.doc() << " |\n";
    }
    out << "\n";
  }
  if (op.attr_size() > 0) {
    out << "| attr | type | default | constraint | doc |\n|---|---|---|---|---|\n";
    for (const AttrDef& a : op.attr()) {
      out << "| `" << a.name() << "` | " << AttrTypeName(a.type()) << " | `" << Default(a) << "` | "
          << Constraint(a) << " | " << a.doc() << " |\n";
    }
    out << "\n";
  }
}

}  // namespace

int OpsCommand(const std::vector<std::string>& argv) {
  Args args;
  if (auto exit = ParseCommand("ops", argv, {{"json", false, false}, {"markdown", false, false}},
                               kHelp, 0, 1, &args))
    return *exit;
  if (args.Has("json") && args.Has("markdown")) {
    std::cerr << "weir ops: --json and --markdown exclude each other\n";
    return 2;
  }
  Status loaded = PluginLoader::Global().LoadDefaults();
  if (!loaded.ok()) {
    std::cerr << loaded.ToString() << "\n";
    return 1;
  }
  OpList all = OpRegistry::Global().Export();
  OpList shown;
  if (args.positional.empty()) {
    shown = all;
  } else {
    const std::string& name = args.positional[0];
    const OpEntry* entry = OpRegistry::Global().Find(name);
    if (entry == nullptr) {
      std::cerr << "weir ops: unknown op '" << name << "'"
                << SuggestClosest(name, OpRegistry::Global().OpNames()) << "\n";
      return 1;
    }
    *shown.add_op() = entry->def;
  }
  if (args.Has("json")) {
    google::protobuf::util::JsonPrintOptions options;
    options.add_whitespace = true;
    options.preserve_proto_field_names = true;
    std::string json;
    auto status = google::protobuf::util::MessageToJsonString(shown, &json, options);
    if (!status.ok()) {
      std::cerr << "weir ops: " << status.message() << "\n";
      return 1;
    }
    std::cout << json;
    return 0;
  }
  if (args.Has("markdown") && args.positional.empty()) {
    std::cout << "# weir operator reference\n\nEvery op of the plugins weir loads by default, "
                 "from their schemas. Generated by `weir ops --markdown`; do not edit.\n\n";
  }
  for (const OpDef& op : shown.op()) {
    if (args.Has("markdown")) {
      PrintMarkdown(op, std::cout);
    } else {
      PrintText(op, std::cout);
      std::cout << "\n";
    }
  }
  return 0;
}

}  // namespace weir::cli
