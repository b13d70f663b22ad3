// A node's typed attrs, as kernels see them: validated against the schema, defaults filled in.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "weir/attr.h"

namespace weir {

class Attrs {
 public:
  Attrs() = default;
  explicit Attrs(std::map<std::string, AttrValue> values, std::string owner = "")
      : values_(std::move(values)), owner_(std::move(owner)) {}

  // CHECK-fails when the schema did not declare `name`: a plugin bug, not a user error.
  const AttrValue& Get(const std::string& name) const;
  bool Has(const std::string& name) const { return values_.count(name) > 0; }

  int64_t Int(const std::string& name) const { return AttrInt(Get(name)); }
  double Float(const std::string& name) const { return AttrFloat(Get(name)); }
  bool Bool(const std::string& name) const { return AttrBool(Get(name)); }
  const std::string& String(const std::string& name) const { return AttrString(Get(name)); }
  DataType Type(const std::string& name) const;
  std::vector<int64_t> IntList(const std::string& name) const { return AttrIntList(Get(name)); }
  std::vector<double> FloatList(const std::string& name) const { return AttrFloatList(Get(name)); }
  std::vector<std::string> StringList(const std::string& name) const {
    return AttrStringList(Get(name));
  }
  const std::map<std::string, AttrValue>& values() const { return values_; }
  void Set(const std::string& name, AttrValue value) { values_[name] = std::move(value); }

 private:
  std::map<std::string, AttrValue> values_;
  std::string owner_;  // for messages: "op 'nn.Linear'"
};

}  // namespace weir
