// dnpo_ckpt: look inside, check and export dnpo checkpoints (one process, no MPI job needed).
//
//   dnpo_ckpt inspect CKPT.h5             what is inside: tensors, shapes, loop state, config
//   dnpo_ckpt verify CKPT.h5|DIR          every chunk's checksum; a directory: each checkpoint
//   dnpo_ckpt export CKPT.h5 --out DIR    the policy (or reference) as an HF model directory
//   dnpo_ckpt logits --model DIR --ids …  a model's logits for token ids, as JSON (for checking
//                                         an export against another implementation)
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "dnpo/ckpt/checkpoint.h"
#include "dnpo/common/error.h"
#include "dnpo/common/main.h"
#include "dnpo/config/loader.h"
#include "dnpo/model/hf_io.h"
#include "dnpo/model/llama.h"

namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

// "5GB", "200MB", "64KB", "1000" → bytes (decimal units, as HF's max_shard_size).
std::int64_t parse_size(const std::string& text) {
  std::size_t used = 0;
  const double value = std::stod(text, &used);
  const auto unit = text.substr(used);
  double scale = 1;
  if (unit == "KB") {
    scale = 1e3;
  } else if (unit == "MB") {
    scale = 1e6;
  } else if (unit == "GB") {
    scale = 1e9;
  } else {
    DNPO_CHECK_WITH(dnpo::ConfigError,
                    unit.empty() || unit == "B",
                    "--max-shard-size '{}': expected a number with KB, MB or GB",
                    text);
  }
  return static_cast<std::int64_t>(value * scale);
}

// The resolved config a training checkpoint carries.
dnpo::config::RunConfig checkpoint_config(const dnpo::ckpt::StateDict& sd,
                                          const std::string& path) {
  const auto it = sd.blobs.find("config");
  DNPO_CHECK_WITH(
      dnpo::CheckpointError,
      it != sd.blobs.end() && !it->second.empty(),
      "checkpoint {} carries no resolved config (blob 'config'): not a dnpo training checkpoint",
      path);
  return dnpo::config::parse_config(it->second, path + ":config");
}

int inspect(const std::string& path) {
  std::cout << dnpo::ckpt::inspect(path);
  dnpo::ckpt::StateDict meta;  // no tensors: attributes and blobs
  dnpo::ckpt::load_into(path, meta);
  if (const auto it = meta.blobs.find("loop"); it != meta.blobs.end()) {
    try {  // a diagnostic tool: a damaged blob is shown as such, the rest was printed above
      auto loop = Json::parse(it->second);
      const auto losses = loop.value("step_losses", Json::array());
      loop.erase("step_losses");
      loop.erase("step_ms");
      std::cout << "\nloop: " << loop.dump() << "\n";
      if (!losses.empty()) {
        std::cout << "loss: first " << losses.front().get<double>() << ", last "
                  << losses.back().get<double>() << " (" << losses.size() << " steps)\n";
      }
    } catch (const Json::exception& e) {
      std::cout << "\nloop: unreadable (" << e.what() << ")\n";
    }
  }
  return 0;
}

int verify(const std::string& target) {
  if (!fs::is_directory(target)) {
    dnpo::ckpt::verify(target);
    std::cout << "ok: " << target << "\n";
    return 0;
  }
  int damaged = 0;
  for (const auto& name : dnpo::ckpt::list_checkpoints(target)) {
    const auto path = dnpo::ckpt::checkpoint_path(target, name);
    try {
      dnpo::ckpt::verify(path);
      std::cout << "ok:      " << path << "\n";
    } catch (const std::exception& e) {
      ++damaged;
      std::cout << "DAMAGED: " << path << ": " << e.what() << "\n";
    }
  }
  const auto latest = dnpo::ckpt::read_latest(target);
  std::cout << "latest:  " << (latest ? *latest : std::string("(missing)")) << "\n";
  if (const auto point = dnpo::ckpt::find_latest_valid(target)) {
    std::cout << "resume --resume auto would use: " << point->path << "\n";
  } else {
    std::cout << "no valid checkpoint: --resume auto would start from the beginning\n";
  }
  return damaged == 0 ? 0 : 1;
}

int export_hf(const std::string& path,
              const std::string& out,
              const std::string& dtype,
              const std::string& max_shard,
              const std::string& which) {
  const auto sd = dnpo::ckpt::load(path);  // one process: every tensor whole
  const auto cfg = checkpoint_config(sd, path);
  dnpo::model::NamedTensors tensors;
  for (const auto& name : dnpo::model::parameter_names(cfg.model)) {
    const auto* slice = sd.find(which + "." + name);
    DNPO_CHECK_WITH(dnpo::CheckpointError,
                    slice != nullptr,
                    "checkpoint {} has no tensor '{}.{}'{}",
                    path,
                    which,
                    name,
                    which == "reference" ? " (only preference stages keep a reference)" : "");
    tensors.emplace_back(name, slice->data.view(slice->shape));
  }
  const dnpo::model::LlamaModel model(cfg.model, tensors);  // checks names and shapes
  dnpo::model::HfWriteOptions options;
  options.bf16 = dtype == "bf16";
  options.max_shard_bytes = parse_size(max_shard);
  dnpo::model::save_hf_tensors(out, cfg.model, model.named_parameters(), options);
  if (cfg.tokenizer.kind == "sentencepiece" && fs::exists(cfg.tokenizer.path)) {
    fs::copy_file(
        cfg.tokenizer.path, out + "/tokenizer.model", fs::copy_options::overwrite_existing);
  }
  std::cout << "exported " << which << " of " << path << " to " << out << " (" << dtype << ", "
            << model.num_parameters() << " parameters)\n";
  return 0;
}

int logits(const std::string& dir, const std::string& ids_text) {
  const auto model = dnpo::model::load_hf_model(dir);
  std::vector<std::int64_t> ids;
  std::istringstream in(ids_text);
  for (std::int64_t id = 0; in >> id;) {
    ids.push_back(id);
  }
  DNPO_CHECK_WITH(dnpo::ConfigError, !ids.empty(), "--ids: no token ids in '{}'", ids_text);
  at::NoGradGuard no_grad;
  const auto input = at::tensor(ids, at::kLong).view({1, -1});
  const auto out = model.logits(model.forward_hidden(input, at::ones_like(input)))[0].contiguous();
  Json rows = Json::array();
  for (std::int64_t t = 0; t < out.size(0); ++t) {
    const auto row = out[t];
    rows.push_back(std::vector<float>(row.data_ptr<float>(), row.data_ptr<float>() + row.numel()));
  }
  std::cout << Json{{"ids", ids}, {"logits", rows}}.dump() << "\n";
  return 0;
}

}  // namespace

namespace {

int run_cli(int argc, char** argv) {
  CLI::App app{"dnpo_ckpt — inspect, verify and export dnpo checkpoints"};
  app.require_subcommand(1);
  std::string path;
  std::string out;
  std::string dtype = "fp32";
  std::string max_shard = "5GB";
  std::string which = "policy";
  std::string model_dir;
  std::string ids;
  auto* inspect_cmd = app.add_subcommand("inspect", "what a checkpoint holds");
  inspect_cmd->add_option("checkpoint", path, "checkpoint file (.h5)")->required();
  auto* verify_cmd = app.add_subcommand("verify", "check every chunk's checksum");
  verify_cmd->add_option("target", path, "checkpoint file, or a checkpoint directory")->required();
  auto* export_cmd = app.add_subcommand("export", "write an HF model directory");
  export_cmd->add_option("checkpoint", path, "checkpoint file (.h5)")->required();
  export_cmd->add_option("--out", out, "HF directory to write")->required();
  export_cmd->add_option("--dtype", dtype, "fp32 | bf16")->check(CLI::IsMember({"fp32", "bf16"}));
  export_cmd->add_option("--max-shard-size", max_shard, "shard above this size (default 5GB)");
  export_cmd->add_option("--model", which, "policy | reference")
      ->check(CLI::IsMember({"policy", "reference"}));
  auto* logits_cmd = app.add_subcommand("logits", "a model's logits for token ids (JSON)");
  logits_cmd->add_option("--model", model_dir, "HF model directory")->required();
  logits_cmd->add_option("--ids", ids, "token ids, space-separated")->required();
  CLI11_PARSE(app, argc, argv);
  if (*inspect_cmd) {
    return inspect(path);
  }
  if (*verify_cmd) {
    return verify(path);
  }
  if (*export_cmd) {
    return export_hf(path, out, dtype, max_shard, which);
  }
  return logits(model_dir, ids);
}

}  // namespace

int main(int argc, char** argv) {
  return dnpo::guarded_main("dnpo_ckpt", argc, argv, run_cli);
}
