// Prints the ids and streamed text of a string, for checking that a plain
// cc_binary run from bazel-bin finds the sentencepiece shim, while also
// linking libprotobuf.
//   tokenizer_probe <tokenizer.model> <text>
#include <google/protobuf/timestamp.pb.h>

#include <iostream>

#include "common/tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " <tokenizer.model> <text>\n";
    return 2;
  }
  google::protobuf::Timestamp ts;  // Pulls in libprotobuf for real.
  ts.set_seconds(1);
  auto tok = wq::Tokenizer::Load(argv[1]);
  if (!tok.ok()) {
    std::cerr << tok.status() << "\n";
    return 1;
  }
  auto ids = (*tok)->Encode(argv[2], /*add_bos=*/true);
  if (!ids.ok()) {
    std::cerr << ids.status() << "\n";
    return 1;
  }
  wq::StreamingDetokenizer detok(**tok, /*at_sequence_start=*/true);
  std::string text;
  for (int id : *ids) {
    std::cout << id << " ";
    text += detok.Push(id);
  }
  std::cout << "\n" << text << detok.Flush() << " (protobuf "
            << ts.ByteSizeLong() << " bytes)\n";
  return 0;
}
