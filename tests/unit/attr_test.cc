// The compact attr syntax and its typing.
#include "weir/attr.h"

#include <gtest/gtest.h>

#include "weir/registrar.h"

namespace weir {
namespace {

std::vector<AttrAssignment> Parse(const std::string& text) {
  auto parsed = ParseAttrString(text, SourceLoc{"f", 1, 10});
  CHECK(parsed.ok()) << parsed.status().ToString();
  return *parsed;
}

std::string Typed(const std::string& literal, AttrType type) {
  auto lit = ParseLiteral(literal);
  if (!lit.ok()) return "parse error: " + lit.status().message();
  auto v = CoerceLiteral(*lit, type);
  return v.ok() ? FormatAttrValue(*v) : "error: " + v.status().message();
}

TEST(AttrSyntax, ParsesEveryValueForm) {
  auto a = Parse("n=3 rate=-2.5e-3 name='two words' path=../x.jsonl dims=[2, [3,4]] ref=$steps");
  ASSERT_EQ(a.size(), 6u);
  EXPECT_EQ(a[0].key, "n");
  EXPECT_EQ(a[0].value.kind, Literal::kNumber);
  EXPECT_EQ(a[1].value.text, "-2.5e-3");
  EXPECT_EQ(a[2].value.kind, Literal::kQuoted);
  EXPECT_EQ(a[2].value.text, "two words");
  EXPECT_EQ(a[3].value.kind, Literal::kWord);
  EXPECT_EQ(a[4].value.kind, Literal::kList);
  EXPECT_EQ(a[4].value.items[1].items.size(), 2u);
  EXPECT_EQ(a[5].value.kind, Literal::kParam);
  EXPECT_EQ(a[5].value.text, "steps");
  // Offsets point at keys and values within the string.
  EXPECT_EQ(a[1].offset, 4);
  EXPECT_EQ(a[1].value.offset, 9);
}

TEST(AttrSyntax, ErrorsPointAtTheColumn) {
  auto missing_eq = ParseAttrString("n=1 rows 2", SourceLoc{"f", 3, 10});
  EXPECT_EQ(missing_eq.status().ToString(),
            "f:3:18: expected '=' after attr name 'rows' (write key=value)");
  auto open_list = ParseAttrString("dims=[1, 2", SourceLoc{"f", 1, 1});
  EXPECT_EQ(open_list.status().ToString(), "f:1:6: unterminated list: missing ']'");
  auto open_quote = ParseAttrString("name='abc", SourceLoc{"f", 1, 1});
  EXPECT_EQ(open_quote.status().ToString(), "f:1:6: unterminated string: missing '");
  auto empty = ParseAttrString("n= m=1", SourceLoc{"f", 1, 1});
  EXPECT_EQ(empty.status().ToString(), "f:1:3: missing value after 'n='");
  auto junk = ParseAttrString("name='a'b", SourceLoc{"f", 1, 1});
  EXPECT_EQ(junk.status().ToString(),
            "f:1:9: unexpected 'b' after the value of 'name' (quote values with spaces)");
}

TEST(AttrTyping, CoercesLiteralsBySchemaType) {
  EXPECT_EQ(Typed("42", ATTR_INT), "42");
  EXPECT_EQ(Typed("4.5", ATTR_INT), "error: expects int, got 4.5");
  EXPECT_EQ(Typed("abc", ATTR_INT), "error: expects int, got 'abc'");
  EXPECT_EQ(Typed("3", ATTR_FLOAT), "3.0");
  EXPECT_EQ(Typed("1e-6", ATTR_FLOAT), "1e-06");
  EXPECT_EQ(Typed("true", ATTR_BOOL), "true");
  EXPECT_EQ(Typed("yes", ATTR_BOOL), "error: expects bool, got 'yes'");
  EXPECT_EQ(Typed("'x y'", ATTR_STRING), "'x y'");
  EXPECT_EQ(Typed("bf16", ATTR_TYPE), "bf16");
  EXPECT_NE(Typed("float", ATTR_TYPE).find("error: expects dtype (one of f32, bf16"),
            std::string::npos);
  EXPECT_EQ(Typed("[2, -1]", ATTR_SHAPE), "[2, -1]");
  EXPECT_EQ(Typed("[2, -3]", ATTR_SHAPE), "error: shape dims must be >= -1, got [2, -3]");
  EXPECT_EQ(Typed("[1, 2]", ATTR_FLOAT_LIST), "[1.0, 2.0]");
  EXPECT_EQ(Typed("[a, 'b c']", ATTR_STRING_LIST), "[a, 'b c']");
  EXPECT_EQ(Typed("[1, x]", ATTR_INT_LIST), "error: expects list(int), got [1, x]");
  EXPECT_EQ(Typed("[[1, 2], [3, 4]]", ATTR_TENSOR), "[[1, 2], [3, 4]]");
  EXPECT_EQ(Typed("[[1, 2], [3]]", ATTR_TENSOR), "error: expects a rectangular tensor, got [3]");
  EXPECT_EQ(Typed("Block", ATTR_FUNC), "Block");
}

TEST(AttrTyping, FormattedValuesReadBackTheSame) {
  for (const char* text : {"0.1", "1e+300", "-0.0", "123456789.123", "inf"}) {
    auto v = CoerceLiteral(*ParseLiteral(text), ATTR_FLOAT);
    ASSERT_TRUE(v.ok());
    auto again = CoerceLiteral(*ParseLiteral(FormatAttrValue(*v)), ATTR_FLOAT);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->f(), v->f()) << text;
  }
  // Strings that would read as another type stay quoted.
  for (const char* s : {"true", "12", "", "a b", "it's", "$x", "[1]"}) {
    AttrValue v;
    v.set_s(s);
    auto lit = ParseLiteral(FormatAttrValue(v));
    ASSERT_TRUE(lit.ok()) << s;
    auto inferred = InferLiteral(*lit);
    ASSERT_TRUE(inferred.ok()) << s;
    EXPECT_EQ(inferred->s(), s);
  }
}

TEST(AttrTyping, ParamsInferTheirType) {
  auto a = Parse("i=3 f=3.0 b=false s=word l=[1, 2.5]");
  EXPECT_EQ(InferredType(*InferLiteral(a[0].value)), ATTR_INT);
  EXPECT_EQ(InferredType(*InferLiteral(a[1].value)), ATTR_FLOAT);
  EXPECT_EQ(InferredType(*InferLiteral(a[2].value)), ATTR_BOOL);
  EXPECT_EQ(InferredType(*InferLiteral(a[3].value)), ATTR_STRING);
  EXPECT_EQ(InferredType(*InferLiteral(a[4].value)), ATTR_FLOAT_LIST);
  // A param converts to an attr's type like its written form would.
  auto three = InferLiteral(a[0].value);
  EXPECT_EQ(FormatAttrValue(*ConvertValue(*three, ATTR_FLOAT)), "3.0");
  EXPECT_FALSE(ConvertValue(*InferLiteral(a[1].value), ATTR_INT).ok());
}

TEST(AttrConstraints, BoundsAndAllowedValues) {
  AttrDef def;
  def.set_name("k");
  def.set_type(ATTR_INT);
  def.set_minimum(1);
  def.set_maximum(8);
  AttrValue v;
  v.set_i(9);
  EXPECT_EQ(CheckAttrConstraints(def, v).message(), "expects int in [1, 8], got 9");
  v.set_i(8);
  EXPECT_TRUE(CheckAttrConstraints(def, v).ok());
  AttrDef mode;
  mode.set_type(ATTR_STRING);
  *mode.add_allowed() = ToAttrValue(std::string("a"));
  *mode.add_allowed() = ToAttrValue(std::string("b"));
  EXPECT_EQ(CheckAttrConstraints(mode, ToAttrValue(std::string("c"))).message(),
            "expects one of {a, b}, got c");
}

}  // namespace
}  // namespace weir
