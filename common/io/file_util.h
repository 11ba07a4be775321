// Small filesystem helpers shared by the services: whole-file reads, durable
// writes and content hashing.
#ifndef WQ_COMMON_FILE_UTIL_H_
#define WQ_COMMON_FILE_UTIL_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace wq {

// A file the services read: `path` beneath the directory `root` (a
// configured --model_root, --artifact_root or --data_root), which no "..",
// absolute path or symlink may lead out of; or, with `root` empty, `path`
// as given (local tools and tests, whose paths are trusted).
struct RootedPath {
  RootedPath() = default;
  RootedPath(std::string path) : path(std::move(path)) {}  // NOLINT: trusted paths convert
  RootedPath(const char* path) : path(path) {}              // NOLINT
  RootedPath(std::string root, std::string path)
      : root(std::move(root)), path(std::move(path)) {}

  // `path`/`name`, under the same root.
  RootedPath Child(std::string_view name) const;
  // root/path, for listing a directory (never for opening a file).
  std::string Full() const;

  std::string root;
  std::string path;
};

// A file descriptor, closed on destruction.
class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ScopedFd(ScopedFd&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  ScopedFd& operator=(ScopedFd&& other) noexcept;
  ~ScopedFd();
  int get() const { return fd_; }
  // Gives up ownership without closing.
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// Opens a regular file for reading. Beneath a root it is opened with
// openat2(RESOLVE_BENEATH) (on kernels without it, the real path is checked
// against the root's and opened O_NOFOLLOW): PERMISSION_DENIED when ".." or
// a symlink leads out of the root (absolute symlinks always do, even to a
// place inside it), INVALID_ARGUMENT for an absolute `path`. The open never
// blocks (O_NONBLOCK), and anything but a regular file (FIFO, device,
// socket, directory) is FAILED_PRECONDITION. NOT_FOUND if it does not
// exist. Messages name `path`, never the root.
absl::StatusOr<ScopedFd> OpenForRead(const RootedPath& file);

// Reads the whole file (OpenForRead's rules and errors).
absl::StatusOr<std::string> ReadFile(const RootedPath& file);

// Size in bytes of the file (OpenForRead's rules and errors).
absl::StatusOr<int64_t> FileSize(const RootedPath& file);

// Creates or truncates `path`, writes `contents`, fsyncs and closes it. Not
// atomic: write to a temporary name and rename if readers may see it.
// How error messages name a file: a path relative to its root as it is; an
// absolute (trusted, server-side) path by its last two components, which for
// an artifact's files is their path inside the artifact root. Clients read
// these messages: the server's directories are none of their business.
std::string PathForMessage(std::string_view path);

absl::Status WriteFileDurably(const std::string& path,
                              std::string_view contents);

// As above, writing `pieces` back to back; lets callers stream large outputs
// without first concatenating them in memory.
absl::Status WriteFileDurably(const std::string& path,
                              absl::Span<const std::string_view> pieces);

// fsyncs a directory so that renames/creations inside it survive a crash.
absl::Status FsyncDirectory(const std::string& dir);

// SHA-256 of the file's contents as lowercase hex, read in chunks so that
// files larger than memory are fine (OpenForRead's rules and errors).
absl::StatusOr<std::string> Sha256File(const RootedPath& file);

// SHA-256 of each consecutive `chunk_bytes` (> 0) of the file, the last
// one shorter, as lowercase hex; the chunks are hashed in parallel, so a
// file checks in a fraction of Sha256File's time on several cores. An
// empty file has no chunks.
absl::StatusOr<std::vector<std::string>> Sha256FileChunks(const RootedPath& file,
                                                         int64_t chunk_bytes);

// SHA-256 of `bytes` as lowercase hex. Returns "" only if OpenSSL itself
// fails (allocation failure), which no valid digest can equal.
std::string Sha256Hex(std::string_view bytes);

// Removes `path` recursively, like `rm -r`. Symlinks are removed, never
// followed. A missing path is OK.
absl::Status RemoveTree(const std::string& path);

}  // namespace wq

#endif  // WQ_COMMON_FILE_UTIL_H_
