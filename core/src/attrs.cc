#include "weir/attrs.h"

namespace weir {

const AttrValue& Attrs::Get(const std::string& name) const {
  auto it = values_.find(name);
  CHECK(it != values_.end()) << owner_ << " asked for attr '" << name
                             << "' that its schema does not declare";
  return it->second;
}

DataType Attrs::Type(const std::string& name) const {
  const AttrValue& v = Get(name);
  CHECK(v.has_type()) << owner_ << ": attr '" << name << "' is not a dtype";
  return v.type();
}

}  // namespace weir
