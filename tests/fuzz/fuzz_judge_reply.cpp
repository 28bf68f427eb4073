// Judge replies: an HTTP body → choices[0].message.content → the template's score, for both
// score formats; and judge template files. A parsed score must be finite and inside the
// template's range (the client maps it onto 0..100). The first byte picks what is fuzzed.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "dnpo/judge/prompt_template.h"
#include "fuzz_common.h"

namespace {

const dnpo::judge::PromptTemplate& bare() {
  static const auto t = dnpo::judge::parse_template(
      "score_format = bare\nscore_min = 0\nscore_max = 100\n---\nQ: {question}\nA: {answer}\n",
      "bare");
  return t;
}

const dnpo::judge::PromptTemplate& brackets() {
  static const auto t = dnpo::judge::parse_template(
      "score_format = brackets\nscore_min = 1\nscore_max = 10\n---\n{question}\n{answer}\n",
      "brackets");
  return t;
}

void check_score(const dnpo::judge::PromptTemplate& tmpl, std::string_view reply) {
  const auto score = dnpo::judge::parse_score(tmpl, reply);
  if (score) {
    dnpo::fuzz::require(std::isfinite(*score), "score finite");
    dnpo::fuzz::require(*score >= tmpl.score_min && *score <= tmpl.score_max, "score in range");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) {
    return 0;
  }
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0:  // a whole HTTP body
      dnpo::fuzz::expect_clean([&] {
        if (const auto text = dnpo::judge::chat_reply_text(rest)) {
          check_score(bare(), *text);
          check_score(brackets(), *text);
        }
      });
      break;
    case 1:  // a reply text
      dnpo::fuzz::expect_clean([&] {
        check_score(bare(), rest);
        check_score(brackets(), rest);
      });
      break;
    default:  // a template file, then a render and a reply against it
      dnpo::fuzz::expect_clean([&] {
        const auto tmpl = dnpo::judge::parse_template(std::string(rest), "fuzz");
        dnpo::fuzz::require(tmpl.score_min < tmpl.score_max, "template range ordered");
        dnpo::judge::render(tmpl, "question {answer}", "answer {question}");
        check_score(tmpl, "42");
        check_score(tmpl, "Rating: [[7]]");
      });
      break;
  }
  return 0;
}
