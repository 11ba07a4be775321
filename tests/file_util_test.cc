#include "common/io/file_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "gtest/gtest.h"

namespace wq {
namespace {

std::string TempPath(const std::string& name) {
  return testing::TempDir() + "/file_util_test_" + name;
}

// `size` bytes that do not repeat with any short period, written to `path`.
std::string WritePatternedFile(const std::string& path, size_t size) {
  std::string contents(size, '\0');
  for (size_t i = 0; i < contents.size(); ++i) {
    contents[i] = static_cast<char>(i * 2654435761u >> 13);
  }
  EXPECT_TRUE(WriteFileDurably(path, contents).ok());
  return contents;
}

TEST(Sha256HexTest, KnownVectors) {
  EXPECT_EQ(Sha256Hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Sha256FileTest, BundledConfig) {
  auto digest = Sha256File("testdata/models/stories260K/config.json");
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest,
            "aefb87416101df6f1a253b76552d173bf58c273b5dab86ab5b681b114297f3de");
}

TEST(Sha256FileTest, MatchesInMemoryHashAcrossChunkBoundaries) {
  // Larger than the 1 MiB read buffer and not a multiple of it.
  const std::string path = TempPath("large");
  const std::string contents = WritePatternedFile(path, (3 << 20) + 12345);
  auto digest = Sha256File(path);
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest, Sha256Hex(contents));
}

TEST(Sha256FileTest, ChunksMatchInMemoryHashes) {
  const std::string path = TempPath("chunked");
  const std::string contents = WritePatternedFile(path, (2 << 20) + 777);
  constexpr int64_t kChunk = (1 << 20) + 3;  // not a multiple of the read buffer
  auto chunks = Sha256FileChunks(path, kChunk);
  ASSERT_TRUE(chunks.ok()) << chunks.status();
  ASSERT_EQ(chunks->size(), 3u);
  for (size_t i = 0; i < chunks->size(); ++i) {
    EXPECT_EQ((*chunks)[i], Sha256Hex(std::string_view(contents).substr(i * kChunk, kChunk)));
  }
  ASSERT_TRUE(WriteFileDurably(path, "").ok());
  EXPECT_TRUE(Sha256FileChunks(path, kChunk)->empty());
  EXPECT_EQ(Sha256FileChunks(path, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Sha256FileChunks(TempPath("missing"), kChunk).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(Sha256FileTest, MissingFileIsNotFound) {
  EXPECT_EQ(Sha256File(TempPath("missing")).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ReadWriteTest, RoundTripIncludingNulBytes) {
  const std::string path = TempPath("roundtrip");
  const std::string contents("hello\0world\n", 12);
  ASSERT_TRUE(WriteFileDurably(path, contents).ok());
  auto read = ReadFile(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, contents);

  // Rewriting truncates.
  ASSERT_TRUE(WriteFileDurably(path, "x").ok());
  EXPECT_EQ(*ReadFile(path), "x");
}

TEST(ReadWriteTest, EmptyFile) {
  const std::string path = TempPath("empty");
  ASSERT_TRUE(WriteFileDurably(path, "").ok());
  auto read = ReadFile(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, "");
}

TEST(ReadWriteTest, PiecesAreConcatenated) {
  const std::string path = TempPath("pieces");
  const std::string_view pieces[] = {"ab", "", "cde"};
  ASSERT_TRUE(WriteFileDurably(path, pieces).ok());
  EXPECT_EQ(*ReadFile(path), "abcde");
}

TEST(ReadWriteTest, Errors) {
  auto missing = ReadFile(TempPath("does_not_exist"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("does_not_exist"),
            std::string::npos);
  EXPECT_FALSE(WriteFileDurably(TempPath("no_such_dir") + "/file", "x").ok());
  EXPECT_TRUE(FsyncDirectory(testing::TempDir()).ok());
  EXPECT_EQ(FsyncDirectory(TempPath("no_such_dir")).code(),
            absl::StatusCode::kNotFound);
}

TEST(RemoveTreeTest, RemovesNestedTreeWithoutFollowingSymlinks) {
  const std::string outside = TempPath("outside");
  ASSERT_EQ(::mkdir(outside.c_str(), 0755), 0);
  ASSERT_TRUE(WriteFileDurably(outside + "/keep", "keep").ok());

  const std::string tree = TempPath("tree");
  ASSERT_EQ(::mkdir(tree.c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((tree + "/sub").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((tree + "/sub/deeper").c_str(), 0755), 0);
  ASSERT_TRUE(WriteFileDurably(tree + "/a", "a").ok());
  ASSERT_TRUE(WriteFileDurably(tree + "/sub/deeper/b", "b").ok());
  ASSERT_EQ(::symlink(outside.c_str(), (tree + "/sub/link").c_str()), 0);

  ASSERT_TRUE(RemoveTree(tree).ok());
  struct stat st;
  EXPECT_NE(::lstat(tree.c_str(), &st), 0);
  // The symlink's target survives.
  EXPECT_EQ(*ReadFile(outside + "/keep"), "keep");
  ASSERT_TRUE(RemoveTree(outside).ok());
}

TEST(RemoveTreeTest, SingleFileAndMissingPath) {
  const std::string file = TempPath("single");
  ASSERT_TRUE(WriteFileDurably(file, "x").ok());
  EXPECT_TRUE(RemoveTree(file).ok());
  EXPECT_EQ(ReadFile(file).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(RemoveTree(file).ok());
}

// A fresh directory under the test's temp dir.
std::string FreshDir(const std::string& name) {
  const std::string dir = TempPath(name);
  EXPECT_TRUE(RemoveTree(dir).ok());
  EXPECT_EQ(::mkdir(dir.c_str(), 0755), 0);
  return dir;
}

TEST(OpenForReadTest, BeneathRootFollowsOnlyLinksThatStayInside) {
  const std::string base = FreshDir("rooted");
  const std::string root = base + "/root";
  ASSERT_EQ(::mkdir(root.c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((root + "/m").c_str(), 0755), 0);
  ASSERT_TRUE(WriteFileDurably(root + "/m/inside", "in").ok());
  ASSERT_TRUE(WriteFileDurably(base + "/outside", "secret").ok());
  ASSERT_EQ(::symlink("inside", (root + "/m/relative").c_str()), 0);
  ASSERT_EQ(::symlink("../../outside", (root + "/m/escape").c_str()), 0);
  ASSERT_EQ(::symlink((base + "/outside").c_str(), (root + "/m/absolute").c_str()), 0);
  ASSERT_EQ(::symlink(base.c_str(), (root + "/up").c_str()), 0);

  EXPECT_EQ(*ReadFile(RootedPath(root, "m/inside")), "in");
  EXPECT_EQ(*ReadFile(RootedPath(root, "m/relative")), "in");
  for (const char* path : {"m/escape", "m/absolute", "up/outside", "m/../../outside"}) {
    SCOPED_TRACE(path);
    const absl::Status status = ReadFile(RootedPath(root, path)).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
    EXPECT_NE(status.message().find(path), absl::string_view::npos) << status;
    EXPECT_EQ(status.message().find(base), absl::string_view::npos) << status;
  }
  EXPECT_EQ(ReadFile(RootedPath(root, base + "/outside")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadFile(RootedPath(root, "m/missing")).status().code(), absl::StatusCode::kNotFound);
  // Trusted paths (empty root) still follow links.
  EXPECT_EQ(*ReadFile(root + "/m/escape"), "secret");
}

TEST(OpenForReadTest, FifosAndDirectoriesFailAtOnce) {
  const std::string root = FreshDir("special");
  ASSERT_EQ(::mkfifo((root + "/fifo").c_str(), 0644), 0);  // no writer: a blocking open hangs
  ASSERT_EQ(::mkdir((root + "/dir").c_str(), 0755), 0);
  for (const char* name : {"fifo", "dir"}) {
    SCOPED_TRACE(name);
    for (const RootedPath& path : {RootedPath(root, name), RootedPath(root + "/" + name)}) {
      const absl::Status status = ReadFile(path).status();
      EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
      EXPECT_EQ(Sha256File(path).status().code(), absl::StatusCode::kFailedPrecondition);
    }
  }
  EXPECT_EQ(ReadFile(RootedPath(root, "/dev/null")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadFile("/dev/null").status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace wq

namespace wq {
namespace {

TEST(PathForMessageTest, NamesNoServerDirectories) {
  EXPECT_EQ(PathForMessage("org/model/config.json"), "org/model/config.json");
  EXPECT_EQ(PathForMessage("/srv/wq/artifacts/some-artifact/model.safetensors"),
            "some-artifact/model.safetensors");
  EXPECT_EQ(PathForMessage("/file"), "file");
  EXPECT_EQ(PathForMessage("/a/b"), "a/b");
  const absl::Status status = WriteFileDurably("/no-such-dir-wq/private/a/b.txt", "x");
  EXPECT_FALSE(status.ok());
  EXPECT_NE(std::string(status.message()).find("'a/b.txt'"), std::string::npos) << status;
  EXPECT_EQ(std::string(status.message()).find("no-such-dir-wq"), std::string::npos) << status;
}

}  // namespace
}  // namespace wq
