// The trainer's recorded trace: the losses of the first 20 steps of SFT, SPIN and NPO on a tiny
// run, and bit-level checksums of the final policy and noise head, at np 1 (one process) and
// np 2, with units resharded after forward and kept gathered. Recorded once (DNPO_RECORD_TRACE=1)
// before the stage loop was restructured; a change to the loop that is meant to leave behaviour
// alone must reproduce it bit for bit on the machine that recorded it. On another CPU or BLAS
// kernel the bits may differ, so there the losses are compared within 1e-5 and the checksums are
// reported, not compared.
#include "trainer_trace.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dnpo/data/tokenizer.h"
#include "dnpo/dist/comm.h"
#include "dnpo/train/trainer.h"
#include "mpi_test_main.h"
#include "one_process.h"

namespace dnpo::train {
namespace {

dist::Comm& comm() {
  static dist::Comm instance(test::mpi(), config::DistConfig{});
  return instance;
}

std::string trace_path() {
  return fmt::format(
      "{}/tests/mpi/train/trainer_trace_np{}.json", DNPO_SOURCE_DIR, test::mpi().world_size());
}

// What decides the bits: the CPU, the BLAS kernel it picks and the thread count (one here).
std::string machine() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  std::string model = "unknown CPU";
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  const char* core = std::getenv("OPENBLAS_CORETYPE");
  return fmt::format("{} | OPENBLAS_CORETYPE={}", model, core == nullptr ? "" : core);
}

// FNV-1a over the tensors' fp32 bytes, in order.
std::string checksum(const std::vector<at::Tensor>& tensors) {
  std::uint64_t hash = 1469598103934665603ULL;
  for (const auto& t : tensors) {
    const auto c = t.detach().to(at::kCPU, at::kFloat).contiguous();
    const auto* bytes = static_cast<const unsigned char*>(c.data_ptr());
    for (std::size_t i = 0; i < static_cast<std::size_t>(c.nbytes()); ++i) {
      hash = (hash ^ bytes[i]) * 1099511628211ULL;
    }
  }
  return fmt::format("{:016x}", hash);
}

nlohmann::json run_case(const std::string& loss, bool reshard_after_forward) {
  auto cfg = fixture::tiny_run(loss);
  cfg.npo.head_init = "normal";  // the noise head's init when the trace was recorded
  // and the reference recomputed every epoch: the kept log-probs differ from a recomputation in
  // the last bits (another micro-batch, other padding); trainer_test compares the two
  cfg.train.reuse_reference = false;
  cfg.train.pack_pairs = false;  // pairs padded, as when the trace was recorded
  cfg.train.max_steps = 20;
  cfg.dist.reshard_after_forward = reshard_after_forward ? "true" : "false";
  // np 1 runs the one-process Comm, which does no collective.
  dist::Comm& c = test::mpi().world_size() > 1 ? comm() : test::one_process();
  model::LlamaModel policy(cfg.model, cfg.run.seed);
  const data::ByteTokenizer tokenizer;
  MetricsWriter metrics;
  Trainer trainer(cfg, policy, tokenizer, metrics, c);
  const auto summary = loss == "sft" ? trainer.train_sft(fixture::sft_records())
                                     : trainer.train_preference(fixture::pair_records());
  nlohmann::json out;
  for (const double l : summary.step_losses) {
    out["losses"].push_back(fmt::format("{:a}", l));
  }
  out["policy"] = checksum(policy.parameters());
  if (trainer.noise_head() != nullptr) {
    out["noise_head"] = checksum(trainer.noise_head()->unit()->gather_full());  // collective
  }
  return out;
}

TEST(TrainerTrace, ReproducesTheRecordedRun) {
  at::set_num_threads(1);
  nlohmann::json now;
  now["machine"] = machine();
  for (const auto* loss : {"sft", "spin", "npo"}) {
    for (const bool reshard : {true, false}) {
      now["cases"][fmt::format("{}{}", loss, reshard ? "" : "_kept")] = run_case(loss, reshard);
    }
  }
  if (std::getenv("DNPO_RECORD_TRACE") != nullptr) {
    if (test::mpi().rank() == 0) {
      std::ofstream(trace_path()) << now.dump(1) << "\n";
      std::printf("recorded %s\n", trace_path().c_str());
    }
    return;
  }
  std::ifstream file(trace_path());
  ASSERT_TRUE(file.good()) << "no recorded trace at " << trace_path()
                           << "; record one with DNPO_RECORD_TRACE=1";
  const auto recorded = nlohmann::json::parse(file);
  const bool same_machine = recorded["machine"] == now["machine"];
  if (!same_machine) {
    std::printf(
        "trace recorded on '%s', running on '%s': losses compared within 1e-5, "
        "checksums not compared\n",
        recorded["machine"].get<std::string>().c_str(),
        now["machine"].get<std::string>().c_str());
  }
  ASSERT_EQ(recorded["cases"].size(), now["cases"].size());
  for (const auto& [name, want] : recorded["cases"].items()) {
    SCOPED_TRACE(name);
    const auto& got = now["cases"][name];
    ASSERT_EQ(got["losses"].size(), want["losses"].size());
    ASSERT_EQ(got["losses"].size(), 20U);
    for (std::size_t s = 0; s < want["losses"].size(); ++s) {
      const auto w = want["losses"][s].get<std::string>();
      const auto g = got["losses"][s].get<std::string>();
      if (same_machine) {
        EXPECT_EQ(g, w) << "step " << s + 1;
      } else {
        const double wv = std::strtod(w.c_str(), nullptr);
        const double gv = std::strtod(g.c_str(), nullptr);
        EXPECT_LE(std::abs(gv - wv), 1e-5 * std::max(1.0, std::abs(wv))) << "step " << s + 1;
      }
    }
    if (same_machine) {
      EXPECT_EQ(got["policy"], want["policy"]);
      EXPECT_EQ(got.value("noise_head", ""), want.value("noise_head", ""));
    }
  }
}

}  // namespace
}  // namespace dnpo::train
