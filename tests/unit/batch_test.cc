#include "weir/batch.h"

#include <gtest/gtest.h>

namespace weir {
namespace {

Batch Make() {
  Batch b;
  CHECK(b.Set("text", StringColumn{"a", "b", "c"}).ok());
  CHECK(b.Set("n", IntColumn{1, 2, 3}).ok());
  return b;
}

TEST(Batch, ColumnsMustAgreeOnTheRowCount) {
  Batch b = Make();
  EXPECT_EQ(b.num_rows(), 3u);
  Status s = b.Set("x", FloatColumn{1.0});
  EXPECT_EQ(s.message(), "column 'x' has 1 rows, the batch has 3");
  // Replacing the only column may change the row count.
  Batch one;
  ASSERT_TRUE(one.Set("a", IntColumn{1, 2}).ok());
  ASSERT_TRUE(one.Set("a", IntColumn{1, 2, 3, 4}).ok());
  EXPECT_EQ(one.num_rows(), 4u);
}

TEST(Batch, TypedLookupNamesWhatIsThere) {
  Batch b = Make();
  auto n = b.Get<IntColumn>("n");
  ASSERT_TRUE(n.ok());
  EXPECT_EQ((**n)[2], 3);
  EXPECT_EQ(b.Get<FloatColumn>("n").status().message(), "column 'n' holds ints, expected floats");
  EXPECT_EQ(b.Get<IntColumn>("m").status().message(),
            "batch has no column 'm' (it has 'text', 'n')");
}

TEST(Batch, IntListColumnsHoldRowsOfAnyLength) {
  Batch b;
  ASSERT_TRUE(b.Set("ids", IntListColumn{{1, 2, 3}, {}, {7}}).ok());
  EXPECT_EQ(b.num_rows(), 3u);
  EXPECT_EQ(ColumnTypeName(*b.Find("ids")), std::string("int lists"));
  Batch picked = b.Select({2, 0});
  EXPECT_EQ(*picked.Get<IntListColumn>("ids").value(), (IntListColumn{{7}, {1, 2, 3}}));
  ASSERT_TRUE(picked.Append(b.Slice(1, 2)).ok());
  EXPECT_EQ(*picked.Get<IntListColumn>("ids").value(), (IntListColumn{{7}, {1, 2, 3}, {}}));
  auto wrong = b.Get<IntColumn>("ids");
  EXPECT_EQ(wrong.status().message(), "column 'ids' holds int lists, expected ints");
}

TEST(Batch, SliceSelectAppend) {
  Batch b = Make();
  Batch s = b.Slice(1, 10);
  EXPECT_EQ(s.num_rows(), 2u);
  EXPECT_EQ(std::get<StringColumn>(*s.Find("text")), (StringColumn{"b", "c"}));
  Batch picked = b.Select({2, 0});
  EXPECT_EQ(std::get<IntColumn>(*picked.Find("n")), (IntColumn{3, 1}));
  ASSERT_TRUE(picked.Append(s).ok());
  EXPECT_EQ(std::get<IntColumn>(*picked.Find("n")), (IntColumn{3, 1, 2, 3}));
  Batch other;
  ASSERT_TRUE(other.Set("z", IntColumn{1}).ok());
  EXPECT_FALSE(picked.Append(other).ok());
}

}  // namespace
}  // namespace weir
