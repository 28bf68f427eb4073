// Judge client throughput and cost: `requests` demo-world answers through one JudgeClient at
// judge.concurrency against a running `dnpo_judge serve --latency-ms L` (benchmarks/run judge).
// The ideal is concurrency / latency requests per second; the client's cost per request is this
// process's CPU time (user + system, every thread: building bodies, the I/O thread, parsing)
// divided by the requests. One JSON line on stdout.
#include <chrono>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <sys/resource.h>

#include "dnpo/common/main.h"
#include "dnpo/data/demo_world.h"
#include "dnpo/judge/client.h"

namespace {

double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) * 1e-6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

int run_bench(int argc, char** argv) {
  std::string url;
  std::string template_path = "configs/judge/default_0_100.txt";
  std::string ca_file;
  int concurrency = 64;
  int requests = 5000;
  double latency_ms = 50;
  CLI::App app{"dnpo judge client throughput"};
  app.add_option("--url", url, "judge base_url (http:// or https://)")->required();
  app.add_option("--template", template_path)->capture_default_str();
  app.add_option("--ca-file", ca_file, "judge.ca_file for https");
  app.add_option("--concurrency", concurrency)->capture_default_str();
  app.add_option("--requests", requests)->capture_default_str();
  app.add_option("--latency-ms", latency_ms, "the server's added latency (for the ideal)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  dnpo::config::DemoConfig demo;
  const auto records = dnpo::data::DemoWorld(demo).make_split("bench", requests);
  std::vector<dnpo::judge::JudgeRequest> batch;
  batch.reserve(records.size());
  for (const auto& r : records) {
    batch.push_back({r.prompt, r.answer});
  }
  dnpo::config::JudgeConfig cfg;
  cfg.backend = "http";
  cfg.base_url = url;
  cfg.prompt_template = template_path;
  cfg.ca_file = ca_file;
  cfg.concurrency = concurrency;
  cfg.max_retries = 0;
  cfg.failure_policy = "drop";
  dnpo::judge::JudgeClient client(cfg);

  const double cpu_before = cpu_seconds();
  const auto start = std::chrono::steady_clock::now();
  auto futures = client.submit(std::move(batch));
  int scored = 0;
  for (auto& f : futures) {
    scored += f.get().outcome == dnpo::judge::Outcome::kScored ? 1 : 0;
  }
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double cpu = cpu_seconds() - cpu_before;
  const double throughput = requests / wall;
  const double ideal = concurrency / (latency_ms / 1000.0);
  std::cout << nlohmann::json{{"name", "judge.client_throughput"},
                              {"config",
                               {{"scheme", url.substr(0, url.find(':'))},
                                {"concurrency", concurrency},
                                {"requests", requests},
                                {"latency_ms", latency_ms}}},
                              {"metric", "requests_per_s"},
                              {"value", throughput},
                              {"unit", "1/s"},
                              {"peer_value", ideal},
                              {"ratio", throughput / ideal},
                              {"scored", scored},
                              {"wall_s", wall},
                              {"client_cpu_us_per_request", cpu / requests * 1e6}}
                   .dump()
            << std::endl;
  return scored == requests ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  return dnpo::guarded_main("dnpo_judge_bench", argc, argv, run_bench);
}
