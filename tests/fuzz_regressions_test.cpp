// Regressions found by the fuzz targets of fuzz/ (scripts/fuzz.sh) in the engine: each test
// replays the minimised input through the same code path in the normal build. The comment names
// the target and the input; the test name says the property that broke.
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "engine/errors.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"
#include "engine/text_stream.h"
#include "tests/catch.hpp"
#include "tests/test_util.h"
#include "tests/tokenizer_models.h"

using namespace hyco;

namespace {

// The message of the ModelError `f` throws; fails the test when it throws anything else.
std::string model_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ModelError& e) {
    return e.what();
  }
  FAIL("no ModelError");
  return {};
}

void write_file(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

std::string run(TextStream& ts, const std::vector<int32_t>& ids) {
  std::string out;
  for (int32_t id : ids) {
    TextStream::Step s = ts.push(id);
    out += s.text;
    if (s.stop) return out;
  }
  return out + ts.finish();
}

}  // namespace

TEST_CASE("a config.json number too large for a double is a ModelError naming the file", "[fuzz]") {
  // fuzz_model_config, minimised input: `1e1111` (json::parse throws out_of_range for it, which
  // the parser let through as it caught parse_error only).
  CHECK(model_error_of([] { parse_model_config("1e1111", "m/config.json"); }).find("m/config.json") !=
        std::string::npos);
  CHECK_THROWS_AS(parse_model_config(R"({"architectures": ["LlamaForCausalLM"], "rope_theta": 1e400})", "config.json"),
                  ModelError);
}

TEST_CASE("a safetensors header number too large for a double is a ModelError naming the file", "[fuzz]") {
  // fuzz_safetensors, minimised input: header length 9, header `300e0827-`.
  const auto dir = test::temp_dir("fuzz-safetensors");
  const auto file = dir / "model.safetensors";
  write_file(file, std::string("\x09\0\0\0\0\0\0\0" "300e0827-", 17));
  CHECK(model_error_of([&] { SafetensorsFile::open(file.string()); }).find(file.string()) != std::string::npos);
  CHECK_THROWS_AS(TensorStore::open_dir(dir.string()), ModelError);
  // The sharded index is read the same way.
  std::filesystem::remove(file);
  write_file(dir / "model.safetensors.index.json", R"({"metadata": {"total_size": 1e400}, "weight_map": {}})");
  CHECK_THROWS_AS(TensorStore::open_dir(dir.string()), ModelError);
  std::filesystem::remove_all(dir);
}

TEST_CASE("an unfinished character at the end of the text obeys n_indent and the stop strings", "[fuzz]") {
  // fuzz_text_stream, minimised input: the hyco vocabulary, n_indent 5, the tokens "}\r\n" and
  // the byte piece <0xCC>: finish() sent the U+FFFD of the unfinished character as a line
  // indented 0 < 5 (it skipped the rules that every pushed token goes through).
  const Tokenizer& tok = test::tokenizer("hyco");
  std::vector<int32_t> ids = tok.encode("}\r\n");
  ids.push_back(tok.byte_id(0xCC));
  TextStream indent(&tok, {}, 5);
  CHECK(run(indent, ids) == "}\r\n");
  // The same path with a stop string that the flushed U+FFFD completes.
  TextStream stop(&tok, {"}\xEF\xBF\xBD"}, 0);
  ids = tok.encode("a}");
  ids.push_back(tok.byte_id(0xCC));
  CHECK(run(stop, ids) == "a");
  // Without a rule to apply, the U+FFFD is still sent.
  TextStream plain(&tok, {}, 0);
  CHECK(run(plain, ids) == "a}\xEF\xBF\xBD");
}
