// Loads a RunConfig from TOML (file or text) plus `--set a.b=v` overrides, checks it, and writes
// it back as TOML. No toml++ in this header; src/config/ is the only code that includes it.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "dnpo/config/config.h"

namespace dnpo::config {

/// Reads the TOML file at `path` (toml::parse_file), applies `overrides` and maps every table to
/// its struct. `path` "" means all defaults (plus overrides).
///
/// Overrides are "a.b=v" strings applied in order (the last wins) to the parsed table before
/// mapping, so they get the same checks as file values. `v` is read as a TOML value
/// (`train.lr=1e-4`, `run.name="x"`, `demo.tasks=["add","sort"]`, `npo.fixed_noise=true`); text
/// that is not a TOML value is taken as a bare string (`run.name=foo`). A table value
/// (`train={lr=1e-4}`) merges into the table. Keys not given keep the struct defaults.
///
/// Single-key rules (types, ranges, allowed strings) are checked here; cross-field rules are
/// validate()'s. Throws ConfigError naming the key path and where it came from:
///   `<file>:<line>:<col>: config key 'train.lr': expected a float > 0, got -1`
///   `--set train.lrr=1: unknown config key 'train.lrr'; hint: did you mean 'train.lr'?`
/// Also for a missing/unreadable file, invalid TOML, or an override without '='.
/// Types: an integer is accepted for a float, a float is not accepted for an integer;
/// std::uint64_t fields take non-negative integers.
RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {});

/// As load_config, from TOML text; `source_name` stands for the file name in messages.
RunConfig parse_config(std::string_view toml_text,
                       const std::string& source_name,
                       const std::vector<std::string>& overrides = {});

/// The whole config as TOML: every table and every key in schema order, with a header comment.
/// parse_config(to_toml(c), ...) gives back a config equal to c (doubles are written exactly).
/// Throws ConfigError if a std::uint64_t value does not fit a TOML integer (> 2^63 - 1).
std::string to_toml(const RunConfig& config);

/// Cross-field rules, plus every single-key rule again (for configs built in code). Collects all
/// problems and throws one ConfigError listing them, each naming its keys and their values.
/// Rules: train.batch_size = micro_batch_size × world_size × grad_accum (integer grad_accum >=
/// 1); model head shapes (hidden % heads, heads % kv heads, even head_dim for RoPE);
/// data.max_prompt_length < data.max_length; tokenizer paths and vocab; demo.tasks distinct;
/// chat.prompt_template contains "{prompt}". Runs on every rank before the first collective.
void validate(const RunConfig& config, int world_size = 1);

/// train.batch_size / (micro_batch_size × world_size): micro-batches each rank accumulates per
/// optimizer step. Throws ConfigError (printing batch_size, micro_batch_size and world_size, with
/// a hint) unless that is an integer >= 1.
int grad_accum_steps(const TrainConfig& train, int world_size);

}  // namespace dnpo::config
