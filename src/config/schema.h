// The config schema: every TOML table and key, the struct member it fills and the rule its value
// obeys. Private to src/config/; no toml++ here (loader.cpp maps TOML through it, validate.cpp and
// to_toml walk it). Adding a config field = one key(...) line below.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "dnpo/config/config.h"

namespace dnpo::config::schema {

/// What one value must satisfy besides its type. Numbers: the range; strings: `choices` and
/// `non_empty`; string arrays: `non_empty` for the array, `choices` for every element.
struct Rule {
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  bool min_open = false;  ///< true: value > min; false: value >= min
  bool max_open = false;
  std::vector<std::string_view> choices;  ///< empty = any string
  bool non_empty = false;
  std::string_view contains;  ///< strings must contain this text ("" = no condition)
};

// Rule builders, as used in tables() below.
Rule at_least(double lo);                                      ///< >= lo
Rule positive();                                               ///< > 0
Rule non_negative();                                           ///< >= 0
Rule closed(double lo, double hi);                             ///< [lo, hi]
Rule closed_open(double lo, double hi);                        ///< [lo, hi)
Rule open_closed(double lo, double hi);                        ///< (lo, hi]
Rule one_of(std::initializer_list<std::string_view> choices);  ///< also non-empty
Rule non_empty();
Rule containing(std::string_view text);  ///< a non-empty string containing `text`

/// True when `value` lies in the rule's range (NaN never does).
bool admits(const Rule& rule, double value);
/// True when `value` is non-empty if required, contains `rule.contains`, and is one of the
/// choices if any are given.
bool admits(const Rule& rule, std::string_view value);
/// "a float > 0", "an integer in [1, 18]", "one of \"sft\", \"spin\"", "a non-empty array of
/// strings, each one of ..." — `noun` is the type without article ("float", "array of strings").
std::string expectation(std::string_view noun, const Rule& rule);

/// The TOML noun of each C++ field type, as messages use it ("integer", "array of strings").
template <typename T>
constexpr std::string_view type_noun() {
  if constexpr (std::is_same_v<T, bool>) {
    return "boolean";
  } else if constexpr (std::is_same_v<T, int>) {
    return "integer";
  } else if constexpr (std::is_same_v<T, std::uint64_t>) {
    return "non-negative integer";
  } else if constexpr (std::is_same_v<T, double>) {
    return "float";
  } else if constexpr (std::is_same_v<T, std::string>) {
    return "string";
  } else {
    static_assert(std::is_same_v<T, std::vector<std::string>>, "no TOML type for this field");
    return "array of strings";
  }
}

// --- TOML text of plain values (to_toml and error messages) ---
std::string format_toml(const std::string& value);  ///< basic string, escaped: "a\"b"
std::string format_toml(std::int64_t value);
std::string format_toml(std::uint64_t value);
std::string format_toml(int value);
std::string format_toml(double value);  ///< shortest text that reads back to the same double
std::string format_toml(bool value);
std::string format_toml(const std::vector<std::string>& value);  ///< ["a", "b"]

// --- the registry ---
template <typename S, typename T>
struct Key {
  std::string_view name;
  T S::*member;
  Rule rule;
};
template <typename S, typename T>
Key<S, T> key(std::string_view name, T S::*member, Rule rule = {}) {
  return {name, member, std::move(rule)};
}

template <typename S, typename... T>
struct Table {
  std::string_view name;
  S RunConfig::*member;
  std::tuple<Key<S, T>...> keys;
};
template <typename S, typename... T>
Table<S, T...> table(std::string_view name, S RunConfig::*member, Key<S, T>... keys) {
  return {name, member, std::make_tuple(std::move(keys)...)};
}

/// Calls f(element) for every element of a tuple, in order.
template <typename Tuple, typename F>
void for_each_in(const Tuple& tuple, F&& f) {
  std::apply([&f](const auto&... element) { (f(element), ...); }, tuple);
}

/// The tables of the run, the model, the tokenizer and chat template, the data files and the demo
/// world.
inline auto data_tables() {
  return std::make_tuple(
      table("run",
            &RunConfig::run,
            key("name", &RunSection::name, non_empty()),
            key("out_dir", &RunSection::out_dir, non_empty()),
            key("seed", &RunSection::seed),
            key("threads", &RunSection::threads, non_negative()),
            key("device", &RunSection::device, one_of({"cpu", "cuda"})),
            key("log_level",
                &RunSection::log_level,
                one_of({"trace", "debug", "info", "warn", "error"})),
            key("log_every", &RunSection::log_every, at_least(1)),
            key("phase_times", &RunSection::phase_times)),
      table("model",
            &RunConfig::model,
            key("init_from", &ModelConfig::init_from),
            key("vocab_size", &ModelConfig::vocab_size, at_least(1)),
            key("hidden_size", &ModelConfig::hidden_size, at_least(1)),
            key("intermediate_size", &ModelConfig::intermediate_size, at_least(1)),
            key("num_hidden_layers", &ModelConfig::num_hidden_layers, at_least(1)),
            key("num_attention_heads", &ModelConfig::num_attention_heads, at_least(1)),
            key("num_key_value_heads", &ModelConfig::num_key_value_heads, at_least(1)),
            key("rms_norm_eps", &ModelConfig::rms_norm_eps, positive()),
            key("rope_theta", &ModelConfig::rope_theta, positive()),
            key("max_position_embeddings", &ModelConfig::max_position_embeddings, at_least(1)),
            key("tie_word_embeddings", &ModelConfig::tie_word_embeddings),
            key("initializer_range", &ModelConfig::initializer_range, positive())),
      table("tokenizer",
            &RunConfig::tokenizer,
            key("kind", &TokenizerConfig::kind, one_of({"byte", "sentencepiece"})),
            key("path", &TokenizerConfig::path)),
      table("chat",
            &RunConfig::chat,
            key("prompt_template", &ChatConfig::prompt_template, containing("{prompt}")),
            key("add_bos", &ChatConfig::add_bos)),
      table("data",
            &RunConfig::data,
            key("train_file", &DataConfig::train_file),
            key("eval_file", &DataConfig::eval_file),
            key("pairs_file", &DataConfig::pairs_file),
            key("max_length", &DataConfig::max_length, at_least(1)),
            key("max_prompt_length", &DataConfig::max_prompt_length, at_least(1))),
      table("demo",
            &RunConfig::demo,
            key("seed", &DemoConfig::seed),
            key("train_size", &DemoConfig::train_size, at_least(1)),
            key("eval_size", &DemoConfig::eval_size, at_least(1)),
            key("noise_rate", &DemoConfig::noise_rate, closed(0, 1)),
            key("tasks", &DemoConfig::tasks, one_of({"add", "reverse", "sort"})),
            key("add_digits", &DemoConfig::add_digits, closed(1, 18)),
            key("string_length", &DemoConfig::string_length, at_least(1))));
}

/// The tables of training, the losses, the self-play loop, sampling and evaluation.
inline auto training_tables() {
  return std::make_tuple(
      table("train",
            &RunConfig::train,
            key("loss", &TrainConfig::loss, one_of({"sft", "spin", "npo"})),
            key("batch_size", &TrainConfig::batch_size, at_least(1)),
            key("micro_batch_size", &TrainConfig::micro_batch_size, at_least(1)),
            key("epochs", &TrainConfig::epochs, at_least(1)),
            key("max_steps", &TrainConfig::max_steps, non_negative()),
            key("optimizer", &TrainConfig::optimizer, one_of({"adamw", "rmsprop"})),
            key("lr", &TrainConfig::lr, positive()),
            key("min_lr_ratio", &TrainConfig::min_lr_ratio, closed(0, 1)),
            key("warmup_ratio", &TrainConfig::warmup_ratio, closed(0, 1)),
            key("lr_schedule", &TrainConfig::lr_schedule, one_of({"linear", "constant"})),
            key("weight_decay", &TrainConfig::weight_decay, non_negative()),
            key("adam_beta1", &TrainConfig::adam_beta1, closed_open(0, 1)),
            key("adam_beta2", &TrainConfig::adam_beta2, closed_open(0, 1)),
            key("eps", &TrainConfig::eps, positive()),
            key("rmsprop_alpha", &TrainConfig::rmsprop_alpha, closed_open(0, 1)),
            key("grad_clip", &TrainConfig::grad_clip, non_negative()),
            key("dtype", &TrainConfig::dtype, one_of({"fp32", "bf16"})),
            key("reuse_reference", &TrainConfig::reuse_reference),
            key("pack_pairs", &TrainConfig::pack_pairs),
            key("pack_length", &TrainConfig::pack_length, non_negative()),
            key("iteration", &TrainConfig::iteration)),
      table("loss", &RunConfig::loss, key("beta", &LossConfig::beta, positive())),
      table("npo",
            &RunConfig::npo,
            key("head", &NpoConfig::head, one_of({"ln_gelu_linear", "linear"})),
            key("scale", &NpoConfig::scale, positive()),
            key("penalty", &NpoConfig::penalty, one_of({"mean", "mean_sq"})),
            key("alpha", &NpoConfig::alpha, non_negative()),
            key("penalty_positions", &NpoConfig::penalty_positions, one_of({"response", "all"})),
            key("max_sigma", &NpoConfig::max_sigma, non_negative()),
            key("fixed_noise", &NpoConfig::fixed_noise),
            key("fixed_sigma", &NpoConfig::fixed_sigma, positive()),
            key("fresh_head_each_iteration", &NpoConfig::fresh_head_each_iteration),
            key("head_init", &NpoConfig::head_init, one_of({"torch_linear", "normal"})),
            key("head_init_std", &NpoConfig::head_init_std, non_negative()),
            key("chunk_positions", &NpoConfig::chunk_positions, at_least(1))),
      table("dsl", &RunConfig::dsl, key("threshold", &DslConfig::threshold)),
      table(
          "selfplay",
          &RunConfig::selfplay,
          key("mode", &SelfplayConfig::mode, one_of({"spin", "dsl", "npo", "dnpo", "fixed_noise"})),
          key("iterations", &SelfplayConfig::iterations, non_negative()),
          key("prompts", &SelfplayConfig::prompts, non_negative()),
          key("sft", &SelfplayConfig::sft),
          key("lr", &SelfplayConfig::lr, positive()),
          key("epochs", &SelfplayConfig::epochs, at_least(1)),
          key("eval_each_iteration", &SelfplayConfig::eval_each_iteration),
          key("generation", &SelfplayConfig::generation, one_of({"whole", "per_layer"})),
          key("mode_from", &SelfplayConfig::mode_from, at_least(1)),
          key("round_prompts", &SelfplayConfig::round_prompts, non_negative())),
      table("sample",
            &RunConfig::sample,
            key("temperature", &SampleConfig::temperature, non_negative()),
            key("top_p", &SampleConfig::top_p, open_closed(0, 1)),
            key("top_k", &SampleConfig::top_k, non_negative()),
            key("max_new_tokens", &SampleConfig::max_new_tokens, at_least(1)),
            key("batch_size", &SampleConfig::batch_size, at_least(1)),
            key("dtype", &SampleConfig::dtype, one_of({"fp32", "bf16"})),
            key("batching", &SampleConfig::batching, one_of({"continuous", "static"})),
            key("refill_rows", &SampleConfig::refill_rows, at_least(1))),
      table("eval",
            &RunConfig::eval,
            key("max_prompts", &EvalConfig::max_prompts, non_negative()),
            key("greedy_too", &EvalConfig::greedy_too)));
}

/// The tables of processes, checkpoints and the judge.
inline auto system_tables() {
  return std::make_tuple(
      table("dist",
            &RunConfig::dist,
            key("backend", &DistConfig::backend, one_of({"auto", "gloo", "nccl"})),
            key("host", &DistConfig::host),
            key("interface", &DistConfig::interface),
            key("port", &DistConfig::port, closed(0, 65535)),
            key("timeout_s", &DistConfig::timeout_s, positive()),
            key("reduce_scatter",
                &DistConfig::reduce_scatter,
                one_of({"allreduce", "reduce", "mpi", "ring"})),
            key("all_gather", &DistConfig::all_gather, one_of({"gloo", "ring"})),
            key("prefetch", &DistConfig::prefetch),
            key("reshard_after_forward",
                &DistConfig::reshard_after_forward,
                one_of({"auto", "true", "false"})),
            key("keep_gathered_budget_gb", &DistConfig::keep_gathered_budget_gb, non_negative()),
            key("reduce_dtype", &DistConfig::reduce_dtype, one_of({"fp32", "bf16"}))),
      table("checkpoint",
            &RunConfig::checkpoint,
            key("dir", &CheckpointConfig::dir),
            key("every_steps", &CheckpointConfig::every_steps, non_negative()),
            key("every_minutes", &CheckpointConfig::every_minutes, non_negative()),
            key("keep_last", &CheckpointConfig::keep_last, at_least(1)),
            key("resume", &CheckpointConfig::resume, non_empty())),
      table("judge",
            &RunConfig::judge,
            key("backend", &JudgeConfig::backend, one_of({"rule", "http"})),
            key("base_url", &JudgeConfig::base_url, containing("://")),
            key("ca_file", &JudgeConfig::ca_file),
            key("tls_verify", &JudgeConfig::tls_verify),
            key("model", &JudgeConfig::model, non_empty()),
            key("template", &JudgeConfig::prompt_template, non_empty()),
            key("api_key_env", &JudgeConfig::api_key_env),
            key("concurrency", &JudgeConfig::concurrency, at_least(1)),
            key("requests_per_minute", &JudgeConfig::requests_per_minute, non_negative()),
            key("timeout_s", &JudgeConfig::timeout_s, positive()),
            key("max_retries", &JudgeConfig::max_retries, non_negative()),
            key("backoff_base_s", &JudgeConfig::backoff_base_s, non_negative()),
            key("backoff_max_s", &JudgeConfig::backoff_max_s, non_negative()),
            key("failure_policy", &JudgeConfig::failure_policy, one_of({"spin", "drop", "fail"})),
            key("imperfection", &JudgeConfig::imperfection, closed(0, 1)),
            key("seed", &JudgeConfig::seed),
            key("temperature", &JudgeConfig::temperature, non_negative()),
            key("max_tokens", &JudgeConfig::max_tokens, at_least(1)),
            key("cache_file", &JudgeConfig::cache_file)));
}

/// Every table of RunConfig in file order; each table lists every member of its struct.
inline const auto& tables() {
  static const auto registry = std::tuple_cat(data_tables(), training_tables(), system_tables());
  return registry;
}

}  // namespace dnpo::config::schema
