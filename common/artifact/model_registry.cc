#include "common/artifact/model_registry.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/io/status_macros.h"

namespace wq {
namespace {

constexpr char kConfigFile[] = "config.json";

bool IsAllowedIdChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
         c == '_' || c == '-' || c == '/';
}

// realpath(3) as a StatusOr; errno is kept for the caller to classify. The
// message names no path: callers say which id or root it was, relative to
// nothing the client does not know.
absl::StatusOr<std::string> RealPath(const std::string& path, int* err) {
  char buffer[PATH_MAX];
  if (::realpath(path.c_str(), buffer) == nullptr) {
    *err = errno;
    return absl::InternalError(absl::StrCat("cannot resolve: ", std::strerror(errno)));
  }
  return std::string(buffer);
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

struct DirCloser {
  void operator()(DIR* dir) const { ::closedir(dir); }
};

// Names in `dir`, without "." and "..". Fails only if `dir` can't be opened.
absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir) {
  std::unique_ptr<DIR, DirCloser> handle(::opendir(dir.c_str()));
  if (handle == nullptr) {
    return absl::InternalError(
        absl::StrCat("cannot list '", dir, "': ", std::strerror(errno)));
  }
  std::vector<std::string> names;
  while (const dirent* entry = ::readdir(handle.get())) {
    std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(std::move(name));
  }
  return names;
}

// Abseil here is built with its own string_view type, which StrCat and
// StrSplit need; the public API uses std::string_view.
absl::Status ValidateResourceIdImpl(absl::string_view id,
                                    absl::string_view what,
                                    int max_components) {
  if (id.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is empty"));
  }
  if (id.size() > kMaxResourceIdLength) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is ", id.size(), " characters long; the limit is ",
                     kMaxResourceIdLength));
  }
  for (char c : id) {
    if (!IsAllowedIdChar(c)) {
      // absl::CHexEscape keeps NUL and control bytes readable in the message.
      return absl::InvalidArgumentError(
          absl::StrCat(what, " '", absl::CHexEscape(id),
                       "' contains a character outside [A-Za-z0-9._-/]"));
    }
  }
  if (id.front() == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", id,
                     "' is an absolute path; use a relative id like "
                     "\"org/name\""));
  }
  std::vector<absl::string_view> components = absl::StrSplit(id, '/');
  if (static_cast<int>(components.size()) > max_components) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " '", id, "' has ", components.size(),
        " '/'-separated components; at most ", max_components, " are allowed"));
  }
  for (absl::string_view component : components) {
    if (component.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " '", id,
                       "' has an empty component (leading, trailing or "
                       "doubled '/')"));
    }
    if (component.front() == '.') {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " '", id, "' has component '", component,
                       "' starting with '.'; '.', '..' and hidden names are "
                       "not allowed"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateResourceId(std::string_view id, std::string_view what,
                                int max_components) {
  return ValidateResourceIdImpl(absl::string_view(id.data(), id.size()),
                                absl::string_view(what.data(), what.size()),
                                max_components);
}

absl::StatusOr<std::string> ResolveUnderRoot(const std::string& root,
                                             std::string_view id_view,
                                             std::string_view what_view,
                                             int max_components) {
  RETURN_IF_ERROR(ValidateResourceId(id_view, what_view, max_components));
  const absl::string_view id(id_view.data(), id_view.size());
  const absl::string_view what(what_view.data(), what_view.size());
  int err = 0;
  absl::StatusOr<std::string> real_root = RealPath(root, &err);
  if (!real_root.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, " root is not accessible: ", std::strerror(err), "; check the configured root"));
  }
  absl::StatusOr<std::string> real_path =
      RealPath(absl::StrCat(root, "/", id), &err);
  if (!real_path.ok()) {
    if (err == ENOENT || err == ENOTDIR) {
      return absl::NotFoundError(absl::StrCat(what, " '", id, "' not found"));
    }
    if (err == ENAMETOOLONG) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " '", id, "' has a component longer than the file system allows"));
    }
    return absl::InternalError(absl::StrCat(what, " '", id, "': ", real_path.status().message()));
  }
  // Symlinks are fine as long as they stay inside the root; the root itself
  // is not a resource.
  const std::string prefix =
      *real_root == "/" ? *real_root : absl::StrCat(*real_root, "/");
  if (real_path->size() <= prefix.size() ||
      real_path->compare(0, prefix.size(), prefix) != 0) {
    // The real paths are the server's business, not the client's.
    return absl::PermissionDeniedError(absl::StrCat(
        what, " '", id, "' leads outside the ", what, " root (through a symlink)"));
  }
  return real_path;
}

ModelRegistry::ModelRegistry(std::string root) : root_(std::move(root)) {}

absl::StatusOr<std::string> ModelRegistry::RealRoot() const {
  int err = 0;
  absl::StatusOr<std::string> real_root = RealPath(root_, &err);
  if (!real_root.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model root is not accessible: ", std::strerror(err),
        "; check the configured model root"));
  }
  return real_root;
}

absl::StatusOr<std::string> ModelRegistry::Resolve(
    std::string_view model_id_view) const {
  RETURN_IF_ERROR(ValidateResourceId(model_id_view, "model id"));
  const absl::string_view model_id(model_id_view.data(), model_id_view.size());
  RETURN_IF_ERROR(RealRoot().status());
  absl::StatusOr<std::string> real_dir =
      ResolveUnderRoot(root_, model_id_view, "model", 2);
  if (absl::IsNotFound(real_dir.status())) {
    return absl::NotFoundError(
        absl::StrCat("model '", model_id, "' not found under the model root"));
  }
  if (!real_dir.ok()) return real_dir.status();
  if (!IsDirectory(*real_dir)) {
    return absl::NotFoundError(absl::StrCat("model '", model_id, "' is not a directory"));
  }
  if (!IsRegularFile(absl::StrCat(*real_dir, "/", kConfigFile))) {
    return absl::NotFoundError(absl::StrCat("model '", model_id, "' has no ", kConfigFile));
  }
  return real_dir;
}

absl::StatusOr<std::vector<std::string>> ModelRegistry::List() const {
  RETURN_IF_ERROR(RealRoot().status());
  ASSIGN_OR_RETURN(std::vector<std::string> top_names, ListDirectory(root_));
  std::vector<std::string> ids;
  for (const std::string& top : top_names) {
    if (!ValidateResourceId(top, "model id", 1).ok()) continue;
    if (Resolve(top).ok()) ids.push_back(top);
    const std::string top_path = absl::StrCat(root_, "/", top);
    if (!IsDirectory(top_path)) continue;
    absl::StatusOr<std::vector<std::string>> names = ListDirectory(top_path);
    if (!names.ok()) continue;
    for (const std::string& name : *names) {
      std::string id = absl::StrCat(top, "/", name);
      if (ValidateResourceId(id, "model id").ok() && Resolve(id).ok()) {
        ids.push_back(std::move(id));
      }
    }
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

}  // namespace wq
