#include "common/io/status_macros.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
absl::StatusOr<int> F(bool ok) { if (!ok) return absl::InvalidArgumentError("x"); return 3; }
absl::Status G(bool ok) { ASSIGN_OR_RETURN(int v, F(ok)); return v == 3 ? absl::OkStatus() : absl::InternalError("y"); }
TEST(Smoke, Macros) { EXPECT_TRUE(G(true).ok()); EXPECT_FALSE(G(false).ok()); auto j = nlohmann::json::parse("{\"a\":1}"); EXPECT_EQ(j["a"], 1); }
