// dnpo_judge: the judge's command line. `serve` runs the rule judge behind the OpenAI Chat
// Completions API (with fault injection for tests) and prints its port on stdout; `score` judges
// a JSONL file of answers with the judge [judge] configures and prints the outcome counts.
// Errors end with one clear message and exit code 1.
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "dnpo/common/env.h"
#include "dnpo/common/error.h"
#include "dnpo/common/log.h"
#include "dnpo/common/main.h"
#include "dnpo/config/loader.h"
#include "dnpo/data/jsonl_reader.h"
#include "dnpo/judge/judge.h"
#include "dnpo/judge/prompt_template.h"
#include "dnpo/judge/server.h"
#include "dnpo/judge/verdict_book.h"

namespace {

using Json = nlohmann::json;

struct ScoreOptions {
  std::string config_path;
  std::vector<std::string> overrides;
  std::string in;
  std::string out;
};

void add_score(CLI::App& app, ScoreOptions& o) {
  auto* score = app.add_subcommand("score", "judge a JSONL file of answers with [judge]");
  score->add_option("-c,--config", o.config_path, "TOML config file (default: built-in defaults)");
  score
      ->add_option("--set", o.overrides, "override a config key, e.g. --set judge.backend=\"http\"")
      ->type_name("KEY=VALUE");
  score->add_option("--in", o.in, "JSONL, one {\"id\", \"prompt\", \"answer\"} a line")->required();
  score->add_option("--out", o.out, "JSONL, one {\"id\", \"outcome\", \"score\", ...} a line")
      ->required();
}

/// Judges every answer of o.in, writes o.out and prints the counts as one JSON line on stdout.
/// Returns 1 when a request failed under judge.failure_policy = "fail".
int run_score(const ScoreOptions& o) {
  const auto cfg = dnpo::config::load_config(o.config_path, o.overrides);
  std::vector<Json> ids;
  std::vector<dnpo::judge::JudgeRequest> batch;
  constexpr const char* kSchema = R"({"id", "prompt": str, "answer": str})";
  dnpo::data::for_each_jsonl_file(
      o.in,
      [&](const Json& j, const dnpo::data::JsonlLine& line) {
        if (!j.contains("prompt") || !j["prompt"].is_string() || !j.contains("answer") ||
            !j["answer"].is_string()) {
          dnpo::data::fail_jsonl_line(line, "\"prompt\" and \"answer\" must be strings", kSchema);
        }
        ids.push_back(j.value("id", Json(line.number)));
        batch.push_back({j["prompt"].get<std::string>(), j["answer"].get<std::string>()});
      },
      kSchema);
  dnpo::judge::VerdictBook cache;
  if (!cfg.judge.cache_file.empty() && std::ifstream(cfg.judge.cache_file).good()) {
    cache.load(cfg.judge.cache_file);
  }
  auto judge = dnpo::judge::make_judge(cfg.judge, &cache);
  auto futures = judge->submit(std::move(batch));
  std::ofstream out(o.out, std::ios::trunc);
  DNPO_CHECK_WITH(dnpo::DataError, out.good(), "cannot write '{}'", o.out);
  std::string first_failure;
  for (std::size_t i = 0; i < futures.size(); ++i) {
    Json row{{"id", ids[i]}};
    try {
      const auto r = futures[i].get();
      row["outcome"] = dnpo::judge::outcome_name(r.outcome);
      row["score"] = r.outcome == dnpo::judge::Outcome::kScored ? Json(r.score) : Json(nullptr);
      row["attempts"] = r.attempts;
      row["cached"] = r.cached;
      row["body"] = dnpo::judge::hex64(r.body_hash);
      row["error"] = r.error;
    } catch (const std::exception& e) {
      row["outcome"] = "failed";
      row["score"] = nullptr;
      row["error"] = e.what();
      if (first_failure.empty()) {
        first_failure = e.what();
      }
    }
    out << row.dump(-1, ' ', false, Json::error_handler_t::replace) << '\n';
  }
  out.close();
  if (!cfg.judge.cache_file.empty()) {
    cache.save(cfg.judge.cache_file);
  }
  const auto s = judge->stats();
  std::cout << Json{{"submitted", s.submitted},
                    {"scored", s.scored},
                    {"cache_hits", s.cache_hits},
                    {"spin_fallback", s.spin_fallback},
                    {"dropped", s.dropped},
                    {"failed", s.failed},
                    {"attempts", s.attempts},
                    {"retries", s.retries},
                    {"pending", s.pending}}
                   .dump()
            << std::endl;
  if (!first_failure.empty()) {
    dnpo::log::error("fatal: {} (judge.failure_policy = \"fail\")", first_failure);
    return 1;
  }
  return 0;
}

void add_serve(CLI::App& app, dnpo::judge::ServerOptions& o) {
  auto* serve = app.add_subcommand("serve", "the rule judge over HTTP (OpenAI Chat Completions)");
  serve->add_option("--host", o.host, "address to bind")->capture_default_str();
  serve->add_option("--port", o.port, "port; 0 = any free one (printed on stdout)")
      ->capture_default_str();
  serve->add_option("--template", o.template_path, "judge prompt template the client uses")
      ->capture_default_str();
  serve->add_option("--imperfection", o.imperfection, "fraction of scores perturbed")
      ->check(CLI::Range(0.0, 1.0));
  serve->add_option("--seed", o.seed, "seed of the perturbations and fault draws");
  serve->add_option("--max-body-bytes", o.max_body_bytes, "larger requests get 413")
      ->capture_default_str();
  serve->add_option("--max-connections", o.max_connections, "more connections get 503")
      ->capture_default_str();
  serve->add_option(
      "--request-log", o.request_log, "JSONL: t, t_start, in_flight, body hash, attempt, outcome");
  serve->add_option("--tls-cert", o.tls_cert, "serve HTTPS with this PEM certificate (chain)")
      ->check(CLI::ExistingFile);
  serve->add_option("--tls-key", o.tls_key, "the certificate's PEM private key")
      ->check(CLI::ExistingFile);
  serve->add_option("--api-key-env",
                    o.api_key_env,
                    "require 'Authorization: Bearer <key>' with the key from this variable");
  auto& f = o.faults;
  serve->add_option("--latency-ms", f.latency_ms, "added before every reply");
  serve->add_option("--p-429", f.p_429, "fraction of attempts answered 429 (Retry-After)");
  serve->add_option("--p-500", f.p_500, "fraction of attempts answered 500");
  serve->add_option("--p-drop", f.p_drop, "fraction of attempts whose connection is dropped");
  serve->add_option("--p-slow", f.p_slow, "fraction of attempts whose reply trickles out");
  serve->add_option("--p-malformed", f.p_malformed, "fraction of attempts with truncated JSON");
  serve->add_option("--p-quota", f.p_quota, "fraction answered 429 insufficient_quota");
  serve->add_option("--p-prose", f.p_prose, "fraction answered with prose instead of a score");
  serve->add_option("--faults-first-k", f.first_k, "faults only on a body's first k attempts");
  serve->add_option("--retry-after-s", f.retry_after_s, "Retry-After of 429 replies")
      ->capture_default_str();
  serve->add_option("--slow-ms", f.slow_ms, "how long a slow reply takes")->capture_default_str();
}

int run_cli(int argc, char** argv) {
  dnpo::log::init(0, dnpo::env::get(dnpo::env::kLogLevel).value_or("info"));
  CLI::App app{"dnpo_judge — the rule judge over the OpenAI Chat Completions API"};
  app.require_subcommand(1, 1);
  dnpo::judge::ServerOptions serve_options;
  serve_options.template_path = "configs/judge/default_0_100.txt";
  add_serve(app, serve_options);
  ScoreOptions score_options;
  add_score(app, score_options);
  CLI11_PARSE(app, argc, argv);
  try {
    if (app.got_subcommand("score")) {
      return run_score(score_options);
    }
    if (app.got_subcommand("serve")) {
      serve_options.faults.seed = serve_options.seed;
      dnpo::judge::JudgeServer server(serve_options);
      std::cout << server.port() << std::endl;  // tests read the port from this line
      dnpo::log::info("dnpo_judge serving on {}://{}:{}",
                      serve_options.tls_cert.empty() ? "http" : "https",
                      serve_options.host,
                      server.port());
      server.run();
      dnpo::log::info("dnpo_judge stopped");
    }
    return 0;
  } catch (const std::exception& e) {
    dnpo::log::error("fatal: {}", e.what());
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  return dnpo::guarded_main("dnpo_judge", argc, argv, run_cli);
}
