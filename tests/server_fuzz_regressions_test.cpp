// Regressions of the fuzz_requests target (fuzz/) in the dialect parsers and formatters: each
// test replays the request body through the parser and the formatter as the HTTP server runs
// them, without a model (ServiceInfo holds a tiny trained tokenizer).
#include <string>
#include <vector>

#include "server/dialect.h"
#include "server/json_fields.h"
#include "tests/catch.hpp"
#include "tests/tokenizer_models.h"

using namespace hyco;

TEST_CASE("a response_fields path with an array index past size_t is left out of the response", "[fuzz]") {
  // Body of the fuzz_requests input: /completion with this response_fields entry made full()
  // throw json out_of_range inside the chunked content provider, which terminated `hyco serve`.
  const Tokenizer& tok = test::tokenizer("hyco");
  ServiceInfo info;
  info.model_name = "test-model";
  info.n_vocab = tok.n_vocab();
  info.n_ctx = 2048;
  info.tok = &tok;
  info.fim = true;
  const json body = json_fields::parse_body(
      R"({"prompt": "fn", "n_predict": 1, "response_fields": ["tokens/99999999999999999999",
          "generation_settings/stop/18446744073709551615", "content"]})");
  ParsedCompletion pc = parse_llamacpp_completion(body, info, /*infill=*/false);
  std::vector<ChoiceState> states(1);
  states[0].text = " main";
  states[0].n_prompt = 2;
  states[0].finish = Finish{};
  json response;
  REQUIRE_NOTHROW(response = pc.formatter->full(states));
  CHECK(response == json{{"content", " main"}});
}
