#include "common/artifact/model_registry.h"

#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "common/io/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace wq {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

void MakeDir(const std::string& path) {
  ASSERT_EQ(::mkdir(path.c_str(), 0755), 0) << path;
}

void MakeModel(const std::string& dir) {
  MakeDir(dir);
  ASSERT_TRUE(WriteFileDurably(dir + "/config.json", "{}").ok());
}

// Layout under a fresh temp dir:
//   root/a/config.json                 model "a"
//   root/org/b/config.json             model "org/b"
//   root/org/nocfg/                    directory without config.json
//   root/empty/                        directory without config.json
//   root/.hidden/config.json           hidden: never addressable
//   root/escape -> ../outside          symlink leaving the root
//   root/alias -> a                    symlink staying inside the root
//   root/org/self -> ..                symlink to the root itself
//   root/file.json                     a plain file
//   outside/config.json                a model outside the root
class ModelRegistryTest : public testing::Test {
 protected:
  void SetUp() override {
    base_ = testing::TempDir() + "/model_registry_test";
    ASSERT_TRUE(RemoveTree(base_).ok());
    MakeDir(base_);
    root_ = base_ + "/root";
    MakeDir(root_);
    MakeModel(root_ + "/a");
    MakeDir(root_ + "/org");
    MakeModel(root_ + "/org/b");
    MakeDir(root_ + "/org/nocfg");
    MakeDir(root_ + "/empty");
    MakeModel(root_ + "/.hidden");
    MakeModel(base_ + "/outside");
    ASSERT_EQ(::symlink("../outside", (root_ + "/escape").c_str()), 0);
    ASSERT_EQ(::symlink("a", (root_ + "/alias").c_str()), 0);
    ASSERT_EQ(::symlink("..", (root_ + "/org/self").c_str()), 0);
    ASSERT_TRUE(WriteFileDurably(root_ + "/file.json", "{}").ok());
    char real[PATH_MAX];
    ASSERT_NE(::realpath(root_.c_str(), real), nullptr);
    real_root_ = real;
  }

  std::string base_;
  std::string root_;
  std::string real_root_;
};

TEST_F(ModelRegistryTest, ResolvesModels) {
  ModelRegistry registry(root_);
  EXPECT_EQ(registry.root(), root_);
  auto a = registry.Resolve("a");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(*a, real_root_ + "/a");
  auto b = registry.Resolve("org/b");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(*b, real_root_ + "/org/b");
}

TEST_F(ModelRegistryTest, SymlinkInsideRootIsAccepted) {
  auto alias = ModelRegistry(root_).Resolve("alias");
  ASSERT_TRUE(alias.ok()) << alias.status();
  EXPECT_EQ(*alias, real_root_ + "/a");
}

TEST_F(ModelRegistryTest, SymlinkLeavingRootIsRefused) {
  auto escape = ModelRegistry(root_).Resolve("escape");
  EXPECT_EQ(escape.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(escape.status().message()),
              HasSubstr("outside the model root"));
  EXPECT_THAT(std::string(escape.status().message()), Not(HasSubstr(base_)));
  // A link to the root itself is not a model either.
  auto self = ModelRegistry(root_).Resolve("org/self");
  EXPECT_EQ(self.status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(ModelRegistryTest, MissingModelsAreNotFound) {
  ModelRegistry registry(root_);
  for (const char* id : {"nope", "org/nope", "empty", "org/nocfg", "org",
                         "file.json", "a/config.json", "file.json/x"}) {
    auto result = registry.Resolve(id);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kNotFound) << id;
    EXPECT_THAT(std::string(result.status().message()), HasSubstr(id));
    // Clients learn the id they sent, never where the server keeps models.
    EXPECT_THAT(std::string(result.status().message()), Not(HasSubstr(base_)));
  }
  EXPECT_THAT(std::string(registry.Resolve("empty").status().message()),
              HasSubstr("config.json"));
}

TEST_F(ModelRegistryTest, MalformedIdsAreInvalid) {
  ModelRegistry registry(root_);
  const std::string ids[] = {
      "../x",
      "/etc",
      "org/../../x",
      "a/./b",
      "",
      std::string("x\0y", 3),
      std::string(257, 'a'),
      "a//b",
      "a/",
      "/",
      ".",
      "..",
      ".hidden",
      "org/.b",
      "a/b/c",
      "a b",
      "a\\b",
      "caf\xc3\xa9",
      "a:b",
      "~",
      "a\nb",
  };
  for (const std::string& id : ids) {
    auto result = registry.Resolve(id);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument)
        << "'" << id << "': " << result.status();
    EXPECT_THAT(std::string(result.status().message()), HasSubstr("model id"));
  }
}

TEST_F(ModelRegistryTest, ListsResolvableModelsSorted) {
  auto ids = ModelRegistry(root_).List();
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre("a", "alias", "org/b"));
}

TEST_F(ModelRegistryTest, MissingRootIsFailedPrecondition) {
  ModelRegistry registry(base_ + "/no_root");
  EXPECT_EQ(registry.List().status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto result = registry.Resolve("a");
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("model root"));
  EXPECT_THAT(std::string(result.status().message()), Not(HasSubstr("no_root")));
}

TEST(ValidateResourceIdTest, Syntax) {
  EXPECT_TRUE(ValidateResourceId("a", "id").ok());
  EXPECT_TRUE(ValidateResourceId("Org-1/model_v2.5", "id").ok());
  EXPECT_TRUE(ValidateResourceId(std::string(256, 'a'), "id").ok());
  EXPECT_FALSE(ValidateResourceId(std::string(257, 'a'), "id").ok());
  EXPECT_TRUE(ValidateResourceId("a..b", "id").ok());  // Only leading dots.

  absl::Status nested = ValidateResourceId("org/name", "artifact id", 1);
  EXPECT_EQ(nested.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(nested.message()), HasSubstr("artifact id"));
  EXPECT_THAT(std::string(nested.message()), HasSubstr("at most 1"));

  absl::Status nul = ValidateResourceId(std::string("x\0y", 3), "id");
  EXPECT_THAT(std::string(nul.message()), HasSubstr("x\\x00y"));
}

}  // namespace
}  // namespace wq
