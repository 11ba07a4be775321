// Small filesystem helpers shared by the services: whole-file reads, durable
// writes and content hashing.
#ifndef WQ_COMMON_FILE_UTIL_H_
#define WQ_COMMON_FILE_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace wq {

// Reads the whole file. NOT_FOUND if it does not exist.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Creates or truncates `path`, writes `contents`, fsyncs and closes it. Not
// atomic: write to a temporary name and rename if readers may see it.
absl::Status WriteFileDurably(const std::string& path,
                              std::string_view contents);

// As above, writing `pieces` back to back; lets callers stream large outputs
// without first concatenating them in memory.
absl::Status WriteFileDurably(const std::string& path,
                              absl::Span<const std::string_view> pieces);

// fsyncs a directory so that renames/creations inside it survive a crash.
absl::Status FsyncDirectory(const std::string& dir);

// SHA-256 of the file's contents as lowercase hex, read in chunks so that
// files larger than memory are fine.
absl::StatusOr<std::string> Sha256File(const std::string& path);

// SHA-256 of each consecutive `chunk_bytes` (> 0) of the file, the last
// one shorter, as lowercase hex; the chunks are hashed in parallel, so a
// file checks in a fraction of Sha256File's time on several cores. An
// empty file has no chunks.
absl::StatusOr<std::vector<std::string>> Sha256FileChunks(const std::string& path,
                                                         int64_t chunk_bytes);

// SHA-256 of `bytes` as lowercase hex. Returns "" only if OpenSSL itself
// fails (allocation failure), which no valid digest can equal.
std::string Sha256Hex(std::string_view bytes);

// Removes `path` recursively, like `rm -r`. Symlinks are removed, never
// followed. A missing path is OK.
absl::Status RemoveTree(const std::string& path);

}  // namespace wq

#endif  // WQ_COMMON_FILE_UTIL_H_
