// Maps model ids ("name" or "org/name") to model directories under one root,
// refusing ids and symlinks that would reach outside it. Ids arrive from RPC
// clients, so they are untrusted.
#ifndef WQ_COMMON_MODEL_REGISTRY_H_
#define WQ_COMMON_MODEL_REGISTRY_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace wq {

inline constexpr size_t kMaxResourceIdLength = 256;

// Checks the syntax of a resource id: 1 to 256 characters from
// [A-Za-z0-9._-/], split by '/' into 1..max_components non-empty components,
// none of which may start with '.' (this rules out ".", ".." and hidden
// entries such as ".git" or in-progress ".tmp" directories). INVALID_ARGUMENT
// naming `what` (e.g. "model id") otherwise.
absl::Status ValidateResourceId(std::string_view id, std::string_view what,
                                int max_components = 2);

// The absolute real path of `id` (checked by ValidateResourceId with
// max_components) under `root`: INVALID_ARGUMENT for a malformed id,
// NOT_FOUND when it does not exist, PERMISSION_DENIED when symlinks take it
// outside the root, FAILED_PRECONDITION when the root itself is missing.
absl::StatusOr<std::string> ResolveUnderRoot(const std::string& root,
                                             std::string_view id,
                                             std::string_view what,
                                             int max_components);

class ModelRegistry {
 public:
  // `root` need not exist yet; Resolve and List report it when it is missing.
  explicit ModelRegistry(std::string root);

  // The absolute real path of the model's directory. INVALID_ARGUMENT for a
  // malformed id; NOT_FOUND when there is no such directory or it has no
  // config.json; PERMISSION_DENIED when symlinks take it outside the root;
  // FAILED_PRECONDITION when the root itself is missing.
  absl::StatusOr<std::string> Resolve(std::string_view model_id) const;

  // Sorted ids of the directories at depth 1 or 2 that Resolve accepts.
  // Subdirectories that cannot be read are skipped.
  absl::StatusOr<std::vector<std::string>> List() const;

  const std::string& root() const { return root_; }

 private:
  absl::StatusOr<std::string> RealRoot() const;

  std::string root_;
};

}  // namespace wq

#endif  // WQ_COMMON_MODEL_REGISTRY_H_
