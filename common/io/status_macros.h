// Early-return helpers for absl::Status / absl::StatusOr, as in Abseil's and
// gRPC's own code bases.
#ifndef WQ_COMMON_STATUS_MACROS_H_
#define WQ_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define WQ_CONCAT_INNER_(a, b) a##b
#define WQ_CONCAT_(a, b) WQ_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                  \
  do {                                         \
    ::absl::Status wq_status_ = (expr);        \
    if (!wq_status_.ok()) return wq_status_;   \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(WQ_CONCAT_(wq_statusor_, __LINE__), lhs, expr)

#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                           \
  if (!statusor.ok()) return statusor.status();     \
  lhs = std::move(statusor).value()

#endif  // WQ_COMMON_STATUS_MACROS_H_
