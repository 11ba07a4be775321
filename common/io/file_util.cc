#include "common/io/file_util.h"

#include <fcntl.h>
#include <ftw.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/io/parallel.h"
#include "common/io/status_macros.h"
#include "openssl/evp.h"

namespace wq {
namespace {

absl::Status ErrnoStatus(int err, const char* what, const std::string& path) {
  std::string message =
      absl::StrCat(what, " '", PathForMessage(path), "' failed: ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case EEXIST:
      return absl::AlreadyExistsError(message);
    case EINVAL:
    case EISDIR:
    case ENAMETOOLONG:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

std::string ToHex(const unsigned char* digest, unsigned int length) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex(2 * length, '0');
  for (unsigned int i = 0; i < length; ++i) {
    hex[2 * i] = kHex[digest[i] >> 4];
    hex[2 * i + 1] = kHex[digest[i] & 0xf];
  }
  return hex;
}

struct EvpMdCtxDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};
using EvpMdCtxPtr = std::unique_ptr<EVP_MD_CTX, EvpMdCtxDeleter>;

absl::StatusOr<EvpMdCtxPtr> NewSha256Context() {
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (ctx == nullptr ||
      EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    return absl::InternalError("OpenSSL could not initialise SHA-256");
  }
  return ctx;
}

absl::StatusOr<std::string> FinishSha256(EVP_MD_CTX* ctx) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_DigestFinal_ex(ctx, digest, &length) != 1) {
    return absl::InternalError("OpenSSL could not finish SHA-256");
  }
  return ToHex(digest, length);
}

int RemoveEntry(const char* path, const struct stat*, int, struct FTW*) {
  return ::remove(path) == 0 ? 0 : errno;
}

}  // namespace

RootedPath RootedPath::Child(std::string_view name) const {
  return RootedPath(root, absl::StrCat(path, "/", absl::string_view(name.data(), name.size())));
}

std::string PathForMessage(std::string_view path) {
  if (path.empty() || path.front() != '/') return std::string(path);
  const size_t last = path.rfind('/');
  const size_t before = last == 0 ? std::string_view::npos : path.rfind('/', last - 1);
  return std::string(path.substr(before == std::string_view::npos ? 1 : before + 1));
}

std::string RootedPath::Full() const { return root.empty() ? path : absl::StrCat(root, "/", path); }

ScopedFd& ScopedFd::operator=(ScopedFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

ScopedFd::~ScopedFd() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {

// Never blocks on a FIFO's missing writer; reads of regular files ignore it.
constexpr int kReadFlags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;

absl::Status Escapes(const std::string& path) {
  return absl::PermissionDeniedError(absl::StrCat(
      "'", path, "' leads outside its root (through '..' or a symlink; absolute symlinks are "
      "refused)"));
}

// Kernels before 5.6 (or sandboxes that hide openat2): resolve every link
// with realpath, require the result under the root's real path, and open it
// O_NOFOLLOW so the last component cannot be swapped for a link meanwhile.
absl::StatusOr<int> OpenBeneathByRealPath(const RootedPath& file) {
  char real_root[PATH_MAX];
  char real[PATH_MAX];
  if (::realpath(file.root.c_str(), real_root) == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("the root of '", file.path, "' is not accessible: ", std::strerror(errno)));
  }
  if (::realpath(file.Full().c_str(), real) == nullptr) return ErrnoStatus(errno, "open", file.path);
  const std::string prefix = std::string(real_root) == "/" ? "/" : absl::StrCat(real_root, "/");
  if (std::string(real).compare(0, prefix.size(), prefix) != 0) return Escapes(file.path);
  const int fd = ::open(real, kReadFlags | O_NOFOLLOW);
  if (fd < 0) return ErrnoStatus(errno, "open", file.path);
  return fd;
}

absl::StatusOr<int> OpenBeneath(const RootedPath& file) {
  if (file.path.empty() || file.path[0] == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("'", file.path, "' must be a path relative to its root"));
  }
  const int root_fd = ::open(file.root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root_fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("the root of '", file.path, "' is not accessible: ", std::strerror(errno)));
  }
  const ScopedFd root(root_fd);
  struct open_how how = {};
  how.flags = kReadFlags;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  const long fd = ::syscall(SYS_openat2, root.get(), file.path.c_str(), &how, sizeof(how));
  if (fd >= 0) return static_cast<int>(fd);
  if (errno == ENOSYS) return OpenBeneathByRealPath(file);
  if (errno == EXDEV || errno == ELOOP) return Escapes(file.path);
  return ErrnoStatus(errno, "open", file.path);
}

const char* FileKind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  return "not a plain file";
}

}  // namespace

absl::StatusOr<ScopedFd> OpenForRead(const RootedPath& file) {
  int raw = -1;
  if (file.root.empty()) {
    raw = ::open(file.path.c_str(), kReadFlags);
    if (raw < 0) return ErrnoStatus(errno, "open", file.path);
  } else {
    ASSIGN_OR_RETURN(raw, OpenBeneath(file));
  }
  ScopedFd fd(raw);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, "stat", file.path);
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("'", file.path, "' is ", FileKind(st.st_mode), ", not a regular file"));
  }
  return fd;
}

absl::StatusOr<std::string> ReadFile(const RootedPath& file) {
  ASSIGN_OR_RETURN(ScopedFd fd, OpenForRead(file));
  std::string contents;
  char buffer[1 << 16];
  while (true) {
    ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "read", file.path);
    }
    if (n == 0) break;
    contents.append(buffer, static_cast<size_t>(n));
  }
  return contents;
}

absl::StatusOr<int64_t> FileSize(const RootedPath& file) {
  ASSIGN_OR_RETURN(ScopedFd fd, OpenForRead(file));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, "stat", file.path);
  return static_cast<int64_t>(st.st_size);
}

absl::Status WriteFileDurably(const std::string& path,
                              std::string_view contents) {
  return WriteFileDurably(path, absl::MakeConstSpan(&contents, 1));
}

absl::Status WriteFileDurably(const std::string& path,
                              absl::Span<const std::string_view> pieces) {
  int raw = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (raw < 0) return ErrnoStatus(errno, "create", path);
  ScopedFd fd(raw);
  for (std::string_view piece : pieces) {
    const char* cursor = piece.data();
    size_t remaining = piece.size();
    while (remaining > 0) {
      ssize_t n = ::write(fd.get(), cursor, remaining);
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus(errno, "write", path);
      }
      cursor += n;
      remaining -= static_cast<size_t>(n);
    }
  }
  if (::fsync(fd.get()) != 0) return ErrnoStatus(errno, "fsync", path);
  // close() can report delayed write errors (e.g. on NFS), so check it.
  if (::close(fd.release()) != 0) return ErrnoStatus(errno, "close", path);
  return absl::OkStatus();
}

absl::Status FsyncDirectory(const std::string& dir) {
  int raw = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (raw < 0) return ErrnoStatus(errno, "open directory", dir);
  ScopedFd fd(raw);
  if (::fsync(fd.get()) != 0) return ErrnoStatus(errno, "fsync directory", dir);
  return absl::OkStatus();
}

namespace {

// SHA-256 of bytes [offset, offset + length) of fd, or of everything from
// offset to the end when length is -1.
absl::StatusOr<std::string> Sha256Range(int fd, const std::string& path, int64_t offset,
                                        int64_t length) {
  auto ctx = NewSha256Context();
  if (!ctx.ok()) return ctx.status();
  // At most 1 MiB, and no more than the range: most hashed files are small.
  int64_t buffer_size = int64_t{1} << 20;
  if (length >= 0) {
    buffer_size = std::min(buffer_size, std::max<int64_t>(length, 1));
  } else if (struct stat st; ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
    buffer_size = std::min(buffer_size, std::max<int64_t>(st.st_size - offset, 1));
  }
  std::unique_ptr<unsigned char[]> buffer(new unsigned char[buffer_size]);
  while (length != 0) {
    const int64_t want = length < 0 ? buffer_size : std::min(buffer_size, length);
    const ssize_t n = ::pread(fd, buffer.get(), static_cast<size_t>(want), offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "read", path);
    }
    if (n == 0) {
      if (length > 0) {
        return absl::DataLossError(absl::StrCat(PathForMessage(path), " is shorter than expected"));
      }
      break;
    }
    if (EVP_DigestUpdate(ctx->get(), buffer.get(), static_cast<size_t>(n)) != 1) {
      return absl::InternalError("OpenSSL SHA-256 update failed");
    }
    offset += n;
    if (length > 0) length -= n;
  }
  return FinishSha256(ctx->get());
}

}  // namespace

absl::StatusOr<std::string> Sha256File(const RootedPath& file) {
  ASSIGN_OR_RETURN(ScopedFd fd, OpenForRead(file));
  return Sha256Range(fd.get(), file.path, 0, -1);
}

absl::StatusOr<std::vector<std::string>> Sha256FileChunks(const RootedPath& file,
                                                         int64_t chunk_bytes) {
  if (chunk_bytes <= 0) return absl::InvalidArgumentError("chunk size must be positive");
  ASSIGN_OR_RETURN(ScopedFd fd, OpenForRead(file));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, "stat", file.path);
  const int64_t size = st.st_size;
  const int64_t chunks = (size + chunk_bytes - 1) / chunk_bytes;
  std::vector<absl::StatusOr<std::string>> digests(static_cast<size_t>(chunks));
  ParallelFor(int64_t{0}, chunks, [&](int64_t i) {
    const int64_t offset = i * chunk_bytes;
    digests[i] = Sha256Range(fd.get(), file.path, offset, std::min(chunk_bytes, size - offset));
  });
  std::vector<std::string> out;
  out.reserve(digests.size());
  for (absl::StatusOr<std::string>& d : digests) {
    if (!d.ok()) return d.status();
    out.push_back(*std::move(d));
  }
  return out;
}

std::string Sha256Hex(std::string_view bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  // One-shot EVP_Digest only fails on allocation failure; an empty string
  // then signals it without needing a StatusOr for a pure function.
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(),
                 nullptr) != 1) {
    return "";
  }
  return ToHex(digest, length);
}

absl::Status RemoveTree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoStatus(errno, "stat", path);
  }
  // FTW_DEPTH visits children before their directory; FTW_PHYS never follows
  // symlinks, so a link to elsewhere removes only the link.
  int rc = ::nftw(path.c_str(), RemoveEntry, 64, FTW_DEPTH | FTW_PHYS);
  if (rc != 0) {
    int err = rc > 0 ? rc : errno;
    return ErrnoStatus(err, "remove tree", path);
  }
  return absl::OkStatus();
}

}  // namespace wq
