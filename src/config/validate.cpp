// validate(): the cross-field rules of a RunConfig (and the schema's single-key rules again, for
// configs built in code); grad_accum_steps(). No toml++ here.
#include <cmath>
#include <cstdint>
#include <iomanip>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "dnpo/common/error.h"
#include "dnpo/config/loader.h"
#include "schema.h"

namespace dnpo::config {
namespace {

using schema::Rule;
using schema::type_noun;
using Problems = std::vector<std::string>;

// --- single-key rules, on struct values ---

template <typename T>
void check_number(const std::string& path, T value, const Rule& rule, Problems& problems) {
  const auto x = static_cast<double>(value);
  if (!std::isfinite(x) || !schema::admits(rule, x)) {
    problems.push_back(detail::concat("config key '",
                                      path,
                                      "': expected ",
                                      schema::expectation(type_noun<T>(), rule),
                                      ", got ",
                                      schema::format_toml(value)));
  }
}

void check_value(const std::string& path, int value, const Rule& rule, Problems& problems) {
  check_number(path, value, rule, problems);
}

void check_value(const std::string& path,
                 std::uint64_t value,
                 const Rule& rule,
                 Problems& problems) {
  check_number(path, value, rule, problems);
}

void check_value(const std::string& path, double value, const Rule& rule, Problems& problems) {
  check_number(path, value, rule, problems);
}

void check_value(const std::string& /*path*/,
                 bool /*value*/,
                 const Rule& /*rule*/,
                 Problems& /*problems*/) {}

void check_value(const std::string& path,
                 const std::string& value,
                 const Rule& rule,
                 Problems& problems) {
  if (!schema::admits(rule, value)) {
    problems.push_back(detail::concat("config key '",
                                      path,
                                      "': expected ",
                                      schema::expectation(type_noun<std::string>(), rule),
                                      ", got ",
                                      schema::format_toml(value)));
  }
}

void check_value(const std::string& path,
                 const std::vector<std::string>& value,
                 const Rule& rule,
                 Problems& problems) {
  if (rule.non_empty && value.empty()) {
    problems.push_back(
        detail::concat("config key '",
                       path,
                       "': expected ",
                       schema::expectation(type_noun<std::vector<std::string>>(), rule),
                       ", got []"));
  }
  Rule element_rule;
  element_rule.choices = rule.choices;
  for (std::size_t i = 0; i < value.size(); ++i) {
    check_value(detail::concat(path, "[", i, "]"), value[i], element_rule, problems);
  }
}

void check_schema_rules(const RunConfig& config, Problems& problems) {
  schema::for_each_in(schema::tables(), [&](const auto& table) {
    const auto& section = config.*table.member;
    schema::for_each_in(table.keys, [&](const auto& key) {
      check_value(
          detail::concat(table.name, ".", key.name), section.*key.member, key.rule, problems);
    });
  });
}

// --- cross-field rules ---

/// "" when batch_size = micro_batch_size × world_size × grad_accum for an integer grad_accum >= 1.
std::string batch_problem(const TrainConfig& train, int world_size) {
  if (world_size < 1) {
    return detail::concat("world_size must be >= 1, got ", world_size);
  }
  if (train.batch_size < 1 || train.micro_batch_size < 1) {
    return detail::concat("train.batch_size (",
                          train.batch_size,
                          ") and train.micro_batch_size (",
                          train.micro_batch_size,
                          ") must be >= 1");
  }
  const std::int64_t batch = train.batch_size;
  const std::int64_t per_step = static_cast<std::int64_t>(train.micro_batch_size) * world_size;
  if (batch % per_step == 0) {
    return "";
  }
  std::ostringstream out;
  out << "train.batch_size (" << batch << ") must equal train.micro_batch_size ("
      << train.micro_batch_size << ") × world_size (" << world_size
      << ") × grad_accum for an integer grad_accum >= 1, but " << batch << " / ("
      << train.micro_batch_size << " × " << world_size << ") = " << std::setprecision(3)
      << static_cast<double>(batch) / static_cast<double>(per_step)
      << "; hint: set train.batch_size to ";
  const std::int64_t lower = batch / per_step * per_step;
  if (lower > 0) {
    out << lower << " or ";
  }
  out << lower + per_step;
  if (batch % world_size == 0) {
    // The largest micro-batch that divides this rank's share of the batch.
    const std::int64_t per_rank = batch / world_size;
    std::int64_t micro = train.micro_batch_size;
    while (per_rank % micro != 0) {
      --micro;
    }
    out << ", or train.micro_batch_size to " << micro << " (grad_accum " << per_rank / micro << ")";
  } else {
    out << " (a multiple of world_size " << world_size << ")";
  }
  return out.str();
}

void check_model(const ModelConfig& model, Problems& problems) {
  const int heads = model.num_attention_heads;
  const int kv_heads = model.num_key_value_heads;
  if (heads < 1 || kv_heads < 1) {
    return;  // reported by the single-key rules
  }
  if (model.hidden_size % heads != 0) {
    problems.push_back(detail::concat("model.hidden_size (",
                                      model.hidden_size,
                                      ") must be divisible by model.num_attention_heads (",
                                      heads,
                                      ")"));
  } else if ((model.hidden_size / heads) % 2 != 0) {
    problems.push_back(detail::concat("head_dim = model.hidden_size (",
                                      model.hidden_size,
                                      ") / model.num_attention_heads (",
                                      heads,
                                      ") = ",
                                      model.hidden_size / heads,
                                      " must be even (rotary embeddings rotate pairs of dims)"));
  }
  if (heads % kv_heads != 0) {
    problems.push_back(
        detail::concat("model.num_attention_heads (",
                       heads,
                       ") must be divisible by model.num_key_value_heads (",
                       kv_heads,
                       "); hint: each key/value head serves a group of query heads"));
  }
}

void check_cross_fields(const RunConfig& config, int world_size, Problems& problems) {
  if (std::string problem = batch_problem(config.train, world_size); !problem.empty()) {
    problems.push_back(std::move(problem));
  }
  check_model(config.model, problems);
  if (config.data.max_prompt_length >= config.data.max_length) {
    problems.push_back(detail::concat("data.max_prompt_length (",
                                      config.data.max_prompt_length,
                                      ") must be < data.max_length (",
                                      config.data.max_length,
                                      ") to leave room for the response"));
  }
  if (config.tokenizer.kind == "sentencepiece" && config.tokenizer.path.empty()) {
    problems.emplace_back(
        "tokenizer.path must name a SentencePiece tokenizer.model when tokenizer.kind = "
        "\"sentencepiece\"");
  }
  if (config.tokenizer.kind == "byte" && config.model.vocab_size < 256) {
    problems.push_back(detail::concat("model.vocab_size (",
                                      config.model.vocab_size,
                                      ") must be >= 256 when tokenizer.kind = \"byte\" (one id per "
                                      "byte, plus special tokens)"));
  }
  if (config.judge.backend == "http" && config.judge.concurrency < world_size) {
    problems.push_back(detail::concat("judge.concurrency (",
                                      config.judge.concurrency,
                                      ") is job-wide and must be >= world_size (",
                                      world_size,
                                      "): each rank needs a request in flight"));
  }
  const std::string backend_for_device = config.run.device == "cuda" ? "nccl" : "gloo";
  if (config.dist.backend != "auto" && config.dist.backend != backend_for_device) {
    problems.push_back(detail::concat("dist.backend = \"",
                                      config.dist.backend,
                                      "\" cannot move run.device = \"",
                                      config.run.device,
                                      "\" tensors; expected \"",
                                      backend_for_device,
                                      "\" or \"auto\""));
  }
  if (config.dist.reduce_dtype == "bf16" && config.run.device != "cuda") {
    problems.emplace_back(
        "dist.reduce_dtype = \"bf16\" needs run.device = \"cuda\" (NCCL); Gloo sums fp32 only");
  }
  if (config.sample.dtype != "fp32" && config.selfplay.generation == "per_layer") {
    problems.push_back(detail::concat(
        "sample.dtype = \"",
        config.sample.dtype,
        "\" needs selfplay.generation = \"whole\": \"per_layer\" decodes each layer as its "
        "unit gathers it, in train.dtype"));
  }
  std::set<std::string> seen;
  for (const auto& task : config.demo.tasks) {
    if (!seen.insert(task).second) {
      problems.push_back(detail::concat("demo.tasks lists \"",
                                        task,
                                        "\" twice; expected distinct tasks, got ",
                                        schema::format_toml(config.demo.tasks)));
    }
  }
}

}  // namespace

int grad_accum_steps(const TrainConfig& train, int world_size) {
  const std::string problem = batch_problem(train, world_size);
  DNPO_CHECK_WITH(ConfigError, problem.empty(), "{}", problem);
  return train.batch_size / (train.micro_batch_size * world_size);
}

void validate(const RunConfig& config, int world_size) {
  Problems problems;
  check_schema_rules(config, problems);
  check_cross_fields(config, world_size, problems);
  if (problems.empty()) {
    return;
  }
  std::string list;
  for (const auto& problem : problems) {
    list += "\n  - " + problem;
  }
  DNPO_FAIL(ConfigError,
            "invalid config (world_size {}), {}{}{}",
            world_size,
            problems.size(),
            problems.size() == 1 ? " problem:" : " problems:",
            list);
}

}  // namespace dnpo::config
