// The command-line flags of SecurityOptions, shared by both services' main().
#ifndef WQ_SERVER_SECURITY_FLAGS_H_
#define WQ_SERVER_SECURITY_FLAGS_H_

#include "server/security.h"

namespace wq {

// --tls_cert, --tls_key, --tls_client_ca, --auth_tokens_file, --insecure.
SecurityOptions SecurityOptionsFromFlags();

}  // namespace wq

#endif  // WQ_SERVER_SECURITY_FLAGS_H_
