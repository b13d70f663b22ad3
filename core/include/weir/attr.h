// The compact attribute syntax of graph files and the typed values it becomes.
//
//   attr: "n=100 rate=0.5 column='text' dims=[2,3] dtype=bf16 steps=$steps"
//
// A string holds whitespace-separated key=value pairs. Values are numbers, words (unquoted text
// such as paths or dtype names), quoted strings ('...' or "..."), lists [a, b, [c, d]] or
// parameter references ($name). They stay untyped Literals until a schema gives them a type.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "weir/graph.pb.h"
#include "weir/op.pb.h"
#include "weir/status.h"

namespace weir {

struct Literal {
  enum Kind { kNumber, kWord, kQuoted, kList, kParam };
  Kind kind = kWord;
  std::string text;            // number text, word, unquoted string, or param name
  std::vector<Literal> items;  // kList
  int offset = 0;              // column offset of the value within its attr string

  // As it would be written back: 3, word, 'quoted', [1, 2], $param.
  std::string ToString() const;
};

struct AttrAssignment {
  std::string key;
  Literal value;
  int offset = 0;  // column offset of the key within its attr string
};

// Parses one attr string. `start` is the location of the string's first character; errors point
// at the exact column.
StatusOr<std::vector<AttrAssignment>> ParseAttrString(std::string_view text,
                                                      const SourceLoc& start);

// Parses a single value ("3", "'x'", "[1,2]"), as given on the command line by --set.
StatusOr<Literal> ParseLiteral(std::string_view text);

const char* AttrTypeName(AttrType t);

// Types a literal for an attr of type `type`. Param references must be resolved before.
StatusOr<AttrValue> CoerceLiteral(const Literal& literal, AttrType type);

// The natural type of a literal written without a schema (graph params): integers are int,
// other numbers float, true/false bool, words and quoted text string, lists of those lists.
StatusOr<AttrValue> InferLiteral(const Literal& literal);
// Parses an attr string whose values have no schema (a model resource's function attrs), each
// typed by InferLiteral.
StatusOr<std::map<std::string, AttrValue>> ParseAttrValues(std::string_view text,
                                                           const SourceLoc& start);
AttrType InferredType(const AttrValue& value);

// Converts an already typed value (a param's) to an attr's type: int widens to float, a string
// names a dtype, function or resource; anything else must match.
StatusOr<AttrValue> ConvertValue(const AttrValue& value, AttrType type);

// Checks bounds and allowed values of an attr definition.
Status CheckAttrConstraints(const AttrDef& def, const AttrValue& value);

// Compact text, parseable again by ParseLiteral: 3, 0.5, true, 'text', [1, 2], bf16.
std::string FormatAttrValue(const AttrValue& value);
// True when the value holds something (an AttrDef's unset default means "required").
bool AttrValueIsSet(const AttrValue& value);

// Typed accessors used by kernels; CHECK-fail on a type the schema did not declare (a plugin bug).
int64_t AttrInt(const AttrValue& v);
double AttrFloat(const AttrValue& v);
bool AttrBool(const AttrValue& v);
const std::string& AttrString(const AttrValue& v);
std::vector<int64_t> AttrIntList(const AttrValue& v);
std::vector<double> AttrFloatList(const AttrValue& v);
std::vector<std::string> AttrStringList(const AttrValue& v);

}  // namespace weir
