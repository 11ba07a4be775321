// C interface of libwq_spm_shim.so, the only code that links sentencepiece.
//
// Debian's libsentencepiece carries and exports its own protobuf-lite, which
// crashes any process that also links libprotobuf (every gRPC program here),
// and its header redefines absl::string_view. So sentencepiece is reached only
// through this plain-C surface, loaded with dlopen(RTLD_LOCAL | RTLD_DEEPBIND)
// by common/tokenizer/tokenizer.cc (dlmopen into a namespace of its own in sanitizer
// builds). Keep this header free of C++ and Abseil types.
#ifndef WQ_COMMON_SENTENCEPIECE_SHIM_H_
#define WQ_COMMON_SENTENCEPIECE_SHIM_H_

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct WqSpm WqSpm;

// Loads a model file. On failure returns NULL, sets *error_code to the
// sentencepiece status code (numerically equal to absl::StatusCode) and
// *error to a malloc'd message the caller frees with wq_spm_free_string.
WqSpm* wq_spm_load(const char* path, int* error_code, char** error);
void wq_spm_free(WqSpm* spm);
void wq_spm_free_string(char* s);

int wq_spm_vocab_size(const WqSpm* spm);
// Special ids; -1 where the model has none.
int wq_spm_bos_id(const WqSpm* spm);
int wq_spm_eos_id(const WqSpm* spm);
int wq_spm_unk_id(const WqSpm* spm);
int wq_spm_pad_id(const WqSpm* spm);

// Encodes text[0, len) without BOS/EOS. Writes min(n, capacity) ids to out
// and returns n, the full count (call again with a larger buffer when
// n > capacity); returns -1 on error.
long wq_spm_encode(const WqSpm* spm, const char* text, size_t len, int* out,
                   size_t capacity);

// Decodes ids (each must be in [0, vocab)) into out, like wq_spm_encode:
// writes min(n, capacity) bytes, returns n, or -1 on error. No terminator.
// Unknown ids always decode as " \xE2\x81\x87 " (" ⁇ ", sentencepiece's
// default), whatever unk_surface the model declares.
long wq_spm_decode(const WqSpm* spm, const int* ids, size_t num_ids, char* out,
                   size_t capacity);

// Piece text of id, valid while spm lives; NULL (and *len = 0) when id is out
// of range.
const char* wq_spm_piece(const WqSpm* spm, int id, size_t* len);
// 0 when id is out of range.
int wq_spm_is_byte(const WqSpm* spm, int id);
int wq_spm_is_control(const WqSpm* spm, int id);
int wq_spm_is_unknown(const WqSpm* spm, int id);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // WQ_COMMON_SENTENCEPIECE_SHIM_H_
