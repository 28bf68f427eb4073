// The demo task world: deterministic prompt generation, label noise, and the verifier.
// Randomness is std::mt19937_64 (fully specified by the standard) plus our own uniform helpers,
// never std::*_distribution, so the data is identical on every platform.
#include "dnpo/data/demo_world.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string_view>
#include <unordered_set>
#include <utility>

#include "dnpo/common/error.h"

namespace dnpo::data {
namespace {

constexpr int kMaxDrawsPerRecord = 1000;  ///< draws before a split gives up finding a new prompt
constexpr const char* kPromptForms = R"("<a>+<b>=", "rev <letters a-z>" or "sort <digits>")";

// --- random helpers ---

/// splitmix64 finaliser: a bijective 64-bit mix.
std::uint64_t mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30U)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27U)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31U);
}

/// FNV-1a over the bytes of `text`.
std::uint64_t hash_string(const std::string& text) {
  std::uint64_t h = 0xCBF29CE484222325ULL;
  for (const char c : text) {
    h = (h ^ static_cast<unsigned char>(c)) * 0x100000001B3ULL;
  }
  return h;
}

/// A seeded stream with platform-independent uniform draws.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : engine_(seed) {}

  /// Uniform in [0, n), unbiased (rejects the low 2^64 mod n values), n >= 1.
  std::uint64_t below(std::uint64_t n) {
    const std::uint64_t threshold = (0 - n) % n;
    std::uint64_t x = engine_();
    while (x < threshold) {
      x = engine_();
    }
    return x % n;
  }
  /// Uniform in [0, 1) with 53 random bits.
  double unit() {
    return static_cast<double>(engine_() >> 11U) * 0x1.0p-53;
  }
  char digit() {
    return static_cast<char>('0' + below(10));
  }
  char letter() {
    return static_cast<char>('a' + below(26));
  }

 private:
  std::mt19937_64 engine_;
};

// --- prompt parsing and solving ---

bool all_of_range(const std::string& text, char lo, char hi) {
  return !text.empty() &&
         std::all_of(text.begin(), text.end(), [&](char c) { return c >= lo && c <= hi; });
}

std::string trim(const std::string& text) {
  const char* space = " \t\r\n\v\f";
  const auto first = text.find_first_not_of(space);
  if (first == std::string::npos) {
    return "";
  }
  const auto last = text.find_last_not_of(space);
  return text.substr(first, last - first + 1);
}

std::string strip_leading_zeros(const std::string& digits) {
  const auto first = digits.find_first_not_of('0');
  return first == std::string::npos ? "0" : digits.substr(first);
}

/// Sum of two non-negative decimal strings of any length.
std::string add_decimal(const std::string& a, const std::string& b) {
  std::string sum;
  int carry = 0;
  for (std::size_t i = 0; i < std::max(a.size(), b.size()) || carry != 0; ++i) {
    int d = carry;
    d += i < a.size() ? a[a.size() - 1 - i] - '0' : 0;
    d += i < b.size() ? b[b.size() - 1 - i] - '0' : 0;
    sum.push_back(static_cast<char>('0' + d % 10));
    carry = d / 10;
  }
  std::reverse(sum.begin(), sum.end());
  return strip_leading_zeros(sum);
}

/// A recognised prompt: its task and the correct answer.
struct Solved {
  std::string task;
  std::string truth;
};

/// The tasks whose prompt is "<keyword> <characters of one range>" and whose answer rearranges
/// those characters.
struct RearrangeTask {
  std::string_view keyword;  ///< with its trailing space
  const char* task;
  char lo;
  char hi;
  void (*rearrange)(std::string&);
};

constexpr RearrangeTask kRearrangeTasks[] = {
    {"rev ", "reverse", 'a', 'z', [](std::string& s) { std::reverse(s.begin(), s.end()); }},
    {"sort ", "sort", '0', '9', [](std::string& s) { std::sort(s.begin(), s.end()); }},
};

std::optional<Solved> solve(const std::string& raw_prompt) {
  const std::string prompt = trim(raw_prompt);
  for (const RearrangeTask& form : kRearrangeTasks) {
    if (prompt.rfind(form.keyword, 0) == 0) {
      std::string text = prompt.substr(form.keyword.size());
      if (!all_of_range(text, form.lo, form.hi)) {
        return std::nullopt;
      }
      form.rearrange(text);
      return Solved{form.task, text};
    }
  }
  const auto plus = prompt.find('+');
  if (plus != std::string::npos && !prompt.empty() && prompt.back() == '=') {
    const std::string a = prompt.substr(0, plus);
    const std::string b = prompt.substr(plus + 1, prompt.size() - plus - 2);
    if (all_of_range(a, '0', '9') && all_of_range(b, '0', '9')) {
      return Solved{"add", add_decimal(a, b)};
    }
  }
  return std::nullopt;
}

// --- generation ---

std::string draw_prompt(const std::string& task, const config::DemoConfig& cfg, Rng& rng) {
  if (task == "add") {
    std::string a;
    std::string b;
    for (int i = 0; i < cfg.add_digits; ++i) {
      a.push_back(rng.digit());
    }
    for (int i = 0; i < cfg.add_digits; ++i) {
      b.push_back(rng.digit());
    }
    return strip_leading_zeros(a) + "+" + strip_leading_zeros(b) + "=";
  }
  if (task == "reverse") {
    std::string text;
    for (int i = 0; i < cfg.string_length; ++i) {
      text.push_back(rng.letter());
    }
    return "rev " + text;
  }
  DNPO_INTERNAL_ASSERT(task == "sort");
  const int length =
      cfg.string_length >= 2 ? 2 + static_cast<int>(rng.below(cfg.string_length - 1)) : 1;
  std::string digits;
  for (int i = 0; i < length; ++i) {
    digits.push_back(rng.digit());
  }
  return "sort " + digits;
}

/// One plausible mistake: swap two adjacent different characters, or move one digit/letter one
/// step. Never returns `truth`; never starts a multi-digit sum with '0'.
std::string corrupt(const std::string& truth, const std::string& task, Rng& rng) {
  const bool no_leading_zero = task == "add";
  auto acceptable = [&](const std::string& s) {
    return s != truth && !(no_leading_zero && s.size() > 1 && s[0] == '0');
  };
  std::vector<std::string> swaps;
  for (std::size_t i = 0; i + 1 < truth.size(); ++i) {
    std::string s = truth;
    std::swap(s[i], s[i + 1]);
    if (acceptable(s)) {
      swaps.push_back(std::move(s));
    }
  }
  const bool use_swap = rng.below(2) == 0;
  if (use_swap && !swaps.empty()) {
    return swaps[rng.below(swaps.size())];
  }
  std::vector<std::string> steps;
  for (std::size_t i = 0; i < truth.size(); ++i) {
    const char c = truth[i];
    const bool digit = c >= '0' && c <= '9';
    const bool letter = c >= 'a' && c <= 'z';
    if (!digit && !letter) {
      continue;
    }
    for (const int delta : {-1, +1}) {
      const char moved = static_cast<char>(c + delta);
      const bool in_range = digit ? (moved >= '0' && moved <= '9') : (moved >= 'a' && moved <= 'z');
      std::string s = truth;
      s[i] = moved;
      if (in_range && acceptable(s)) {
        steps.push_back(std::move(s));
      }
    }
  }
  DNPO_INTERNAL_ASSERT(!steps.empty());
  return steps[rng.below(steps.size())];
}

std::string record_id(const std::string& split, int index) {
  std::string number = std::to_string(index);
  if (number.size() < 6) {
    number.insert(0, 6 - number.size(), '0');
  }
  return split + "-" + number;
}

/// The records of one split: `exclude` prompts are never drawn; `unique` forbids repeats.
std::vector<PromptRecord> generate(const config::DemoConfig& cfg,
                                   const std::string& split,
                                   int n,
                                   const std::unordered_set<std::string>& exclude,
                                   bool unique) {
  Rng rng(mix64(cfg.seed ^ mix64(hash_string(split))));
  std::unordered_set<std::string> seen;
  std::vector<PromptRecord> records;
  records.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    const std::string& task = cfg.tasks[static_cast<std::size_t>(i) % cfg.tasks.size()];
    std::string prompt;
    int draws = 0;
    do {
      DNPO_CHECK_WITH(ConfigError,
                      draws < kMaxDrawsPerRecord,
                      "demo world: no new \"{}\" prompt for split '{}' record {} after {} draws "
                      "(demo.add_digits = {}, demo.string_length = {}, demo.eval_size = {}); hint: "
                      "raise demo.add_digits / demo.string_length or lower demo.eval_size",
                      task,
                      split,
                      i,
                      kMaxDrawsPerRecord,
                      cfg.add_digits,
                      cfg.string_length,
                      cfg.eval_size);
      prompt = draw_prompt(task, cfg, rng);
      ++draws;
    } while (exclude.count(prompt) != 0 || (unique && seen.count(prompt) != 0));
    if (unique) {
      seen.insert(prompt);
    }
    PromptRecord record;
    record.id = record_id(split, i);
    record.task = task;
    record.truth = solve(prompt)->truth;
    record.prompt = std::move(prompt);
    const bool noisy = rng.unit() < cfg.noise_rate;  // drawn for every record: stable streams
    record.answer = noisy ? corrupt(record.truth, task, rng) : record.truth;
    records.push_back(std::move(record));
  }
  return records;
}

}  // namespace

DemoWorld::DemoWorld(config::DemoConfig cfg) : cfg_(std::move(cfg)) {
  DNPO_CHECK_WITH(ConfigError,
                  !cfg_.tasks.empty(),
                  "demo.tasks is empty; expected a subset of [\"add\", \"reverse\", \"sort\"]");
  for (std::size_t i = 0; i < cfg_.tasks.size(); ++i) {
    const std::string& task = cfg_.tasks[i];
    DNPO_CHECK_WITH(ConfigError,
                    task == "add" || task == "reverse" || task == "sort",
                    "demo.tasks[{}] = \"{}\" is unknown; expected \"add\", \"reverse\" or \"sort\"",
                    i,
                    task);
  }
  DNPO_CHECK_WITH(
      ConfigError, cfg_.add_digits >= 1, "demo.add_digits must be >= 1, got {}", cfg_.add_digits);
  DNPO_CHECK_WITH(ConfigError,
                  cfg_.string_length >= 1,
                  "demo.string_length must be >= 1, got {}",
                  cfg_.string_length);
  DNPO_CHECK_WITH(ConfigError,
                  cfg_.noise_rate >= 0.0 && cfg_.noise_rate <= 1.0,
                  "demo.noise_rate must be in [0, 1], got {}",
                  cfg_.noise_rate);
  DNPO_CHECK_WITH(
      ConfigError, cfg_.train_size >= 0, "demo.train_size must be >= 0, got {}", cfg_.train_size);
  DNPO_CHECK_WITH(
      ConfigError, cfg_.eval_size >= 0, "demo.eval_size must be >= 0, got {}", cfg_.eval_size);
}

std::vector<PromptRecord> DemoWorld::make_split(const std::string& split, int n) const {
  DNPO_CHECK(n >= 0, "demo world: split '{}' size must be >= 0, got {}", split, n);
  if (split == "eval") {
    return generate(cfg_, split, n, {}, /*unique=*/true);
  }
  std::unordered_set<std::string> eval_prompts;
  for (PromptRecord& record : generate(cfg_, "eval", cfg_.eval_size, {}, /*unique=*/true)) {
    eval_prompts.insert(std::move(record.prompt));
  }
  return generate(cfg_, split, n, eval_prompts, /*unique=*/false);
}

void write_demo_data(const config::DemoConfig& cfg, const std::string& dir) {
  const DemoWorld world(cfg);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  DNPO_CHECK_WITH(DataError, !ec, "cannot create demo data directory '{}': {}", dir, ec.message());
  const std::filesystem::path root(dir);
  write_prompts_jsonl((root / "train.jsonl").string(), world.make_split("train", cfg.train_size));
  std::vector<PromptRecord> eval = world.make_split("eval", cfg.eval_size);
  for (PromptRecord& record : eval) {
    record.answer = record.truth;
  }
  write_prompts_jsonl((root / "eval.jsonl").string(), eval);
}

std::optional<std::string> prompt_task(const std::string& prompt) {
  auto solved = solve(prompt);
  return solved ? std::optional<std::string>(std::move(solved->task)) : std::nullopt;
}

std::optional<std::string> solve_prompt(const std::string& prompt) {
  auto solved = solve(prompt);
  return solved ? std::optional<std::string>(std::move(solved->truth)) : std::nullopt;
}

int verify_answer(const std::string& prompt, const std::string& answer) {
  const std::optional<Solved> solved = solve(prompt);
  DNPO_CHECK_WITH(DataError,
                  solved.has_value(),
                  "verifier: not a demo-world prompt: \"{}\"; expected {}",
                  prompt.size() > 80 ? prompt.substr(0, 80) + "..." : prompt,
                  kPromptForms);
  const std::string& truth = solved->truth;
  const std::string given = trim(answer);
  if (given == truth) {
    return 100;
  }
  if (given.empty()) {
    return 0;
  }
  // add: compare digits by place value (right-aligned); reverse/sort: left-aligned.
  const bool right_aligned = solved->task == "add";
  const std::size_t overlap = std::min(truth.size(), given.size());
  std::size_t matches = 0;
  for (std::size_t i = 0; i < overlap; ++i) {
    const std::size_t t = right_aligned ? truth.size() - 1 - i : i;
    const std::size_t g = right_aligned ? given.size() - 1 - i : i;
    matches += truth[t] == given[g] ? 1 : 0;
  }
  const std::size_t longest = std::max(truth.size(), given.size());
  return static_cast<int>(90 * matches / longest);
}

}  // namespace dnpo::data
