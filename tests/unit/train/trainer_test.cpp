// Tiny end-to-end loops: SFT lowers the loss; preference training (SPIN, NPO, fixed noise) runs,
// moves the policy and skips pairs whose two answers are the same text.
#include "dnpo/train/trainer.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "dnpo/common/env.h"
#include "dnpo/common/error.h"
#include "dnpo/data/chat_template.h"
#include "dnpo/train/checkpointing.h"
#include "dnpo/train/metrics.h"
#include "one_process.h"

namespace dnpo::train {
namespace {

config::RunConfig tiny_run(const std::string& loss) {
  config::RunConfig cfg;
  cfg.run.seed = 99;
  cfg.run.log_every = 1000;
  cfg.model.vocab_size = 260;
  cfg.model.hidden_size = 32;
  cfg.model.intermediate_size = 64;
  cfg.model.num_hidden_layers = 2;
  cfg.model.num_attention_heads = 4;
  cfg.model.num_key_value_heads = 2;
  cfg.model.max_position_embeddings = 128;
  cfg.model.tie_word_embeddings = true;
  cfg.chat.prompt_template = "Q:{prompt}\nA:";
  cfg.data.max_length = 64;
  cfg.data.max_prompt_length = 32;
  cfg.train.loss = loss;
  cfg.train.batch_size = 4;
  cfg.train.micro_batch_size = 2;  // two micro-batches per step: accumulation is exercised
  cfg.train.lr = 1e-2;
  cfg.train.warmup_ratio = 0.1;
  cfg.loss.beta = 0.5;
  return cfg;
}

std::vector<data::PromptRecord> sft_records() {
  return {{"1", "2+3", "5", "", ""},
          {"2", "4+4", "8", "", ""},
          {"3", "rev abc", "cba", "", ""},
          {"4", "sort 312", "123", "", ""},
          {"5", "1+1", "2", "", ""},
          {"6", "rev xy", "yx", "", ""}};
}

std::vector<data::PairRecord> pairs() {
  return {{"1", "2+3", "5", "6", {}, {}},
          {"2", "4+4", "8", "9", {}, {}},
          {"3", "rev abc", "cba", "abc", {}, {}},
          {"4", "same", "x", "x", {}, {}},  // identical: skipped
          {"5", "sort 312", "123", "321", {}, {}}};
}

double max_param_change(const model::LlamaModel& a, const model::LlamaModel& b) {
  double out = 0;
  for (std::size_t i = 0; i < a.parameters().size(); ++i) {
    out = std::max(out, (a.parameters()[i] - b.parameters()[i]).abs().max().item<double>());
  }
  return out;
}

TEST(Trainer, SftLowersTheLoss) {
  auto cfg = tiny_run("sft");
  cfg.train.max_steps = 20;
  model::LlamaModel policy(cfg.model, cfg.run.seed);
  const data::ByteTokenizer tokenizer;
  MetricsWriter metrics;
  Trainer trainer(cfg, policy, tokenizer, metrics, test::one_process());
  const auto summary = trainer.train_sft(sft_records());
  EXPECT_EQ(summary.steps, 20);
  EXPECT_EQ(summary.truncated, 0);
  ASSERT_TRUE(std::isfinite(summary.first_loss));
  ASSERT_TRUE(std::isfinite(summary.last_loss));
  // Starts near ln(260) (a random model) and drops clearly.
  EXPECT_GT(summary.first_loss, 4.0);
  EXPECT_LT(summary.last_loss, summary.first_loss - 1.0)
      << "first " << summary.first_loss << " last " << summary.last_loss;
  EXPECT_GT(summary.tokens_per_second, 0);
}

TEST(Trainer, SftCountsTruncatedSamples) {
  auto cfg = tiny_run("sft");
  cfg.train.max_steps = 1;
  cfg.data.max_length = 8;
  cfg.data.max_prompt_length = 6;
  model::LlamaModel policy(cfg.model, 1);
  const data::ByteTokenizer tokenizer;
  MetricsWriter metrics;
  Trainer trainer(cfg, policy, tokenizer, metrics, test::one_process());
  // Every prompt is "Q:" + text + "\nA:" after BOS: longer than 6 tokens.
  EXPECT_EQ(trainer.train_sft(sft_records()).truncated, 6);
}

struct PreferenceRun {
  TrainSummary summary;
  double change = 0;
  bool has_head = false;
};

PreferenceRun run_preference(config::RunConfig cfg) {
  cfg.train.max_steps = 4;
  model::LlamaModel policy(cfg.model, cfg.run.seed);
  const auto before = policy.clone();
  const data::ByteTokenizer tokenizer;
  MetricsWriter metrics;
  Trainer trainer(cfg, policy, tokenizer, metrics, test::one_process());
  PreferenceRun run;
  run.summary = trainer.train_preference(pairs());
  run.change = max_param_change(policy, before);
  run.has_head = trainer.noise_head() != nullptr;
  return run;
}

TEST(Trainer, NpoRunsChangesThePolicyAndSkipsIdenticalPairs) {
  const auto run = run_preference(tiny_run("npo"));
  EXPECT_EQ(run.summary.steps, 4);
  EXPECT_EQ(run.summary.skipped_identical, 1);
  EXPECT_TRUE(std::isfinite(run.summary.first_loss));
  EXPECT_TRUE(std::isfinite(run.summary.last_loss));
  EXPECT_GT(run.change, 1e-4);
  EXPECT_TRUE(run.has_head);
}

TEST(Trainer, NpoCanStartFromAnotherRunsNoiseHead) {
  auto cfg = tiny_run("npo");
  cfg.train.max_steps = 4;
  model::LlamaModel policy(cfg.model, cfg.run.seed);
  const data::ByteTokenizer tokenizer;
  MetricsWriter metrics;
  Trainer first(cfg, policy, tokenizer, metrics, test::one_process());
  first.train_preference(pairs());
  const auto trained = first.noise_head()->unit()->gather_full()[0];
  // A later iteration (another fresh-head seed) at a learning rate too small to move anything:
  // its head ends where it started.
  auto later = cfg;
  later.train.iteration = 1;
  later.train.lr = 1e-12;
  later.train.max_steps = 1;
  const auto final_head = [&](const ShardedNoiseHead* initial) {
    Trainer trainer(later, policy, tokenizer, metrics, test::one_process());
    trainer.set_initial_noise_head(initial);
    trainer.train_preference(pairs());
    return trainer.noise_head()->unit()->gather_full()[0];
  };
  EXPECT_LT((final_head(first.noise_head()) - trained).abs().max().item<double>(), 1e-9);
  EXPECT_GT((final_head(nullptr) - trained).abs().max().item<double>(), 1e-3);  // fresh
}

TEST(Trainer, NpoFixedNoiseHasNoHead) {
  auto cfg = tiny_run("npo");
  cfg.npo.fixed_noise = true;
  const auto run = run_preference(cfg);
  EXPECT_EQ(run.summary.skipped_identical, 1);
  EXPECT_GT(run.change, 1e-4);
  EXPECT_FALSE(run.has_head);
}

TEST(Trainer, SpinStartsAtLog2AndLowersTheLoss) {
  auto cfg = tiny_run("spin");
  cfg.train.max_steps = 10;
  model::LlamaModel policy(cfg.model, cfg.run.seed);
  const auto before = policy.clone();
  const data::ByteTokenizer tokenizer;
  MetricsWriter metrics;
  Trainer trainer(cfg, policy, tokenizer, metrics, test::one_process());
  const auto summary = trainer.train_preference(pairs());
  EXPECT_EQ(summary.steps, 10);
  EXPECT_EQ(summary.skipped_identical, 1);
  EXPECT_GT(max_param_change(policy, before), 1e-4);
  EXPECT_EQ(trainer.noise_head(), nullptr);
  // Step 1: policy == reference, so every pair's loss is ℓ(0) = log 2.
  EXPECT_NEAR(summary.first_loss, std::log(2.0), 1e-5);
  EXPECT_LT(summary.last_loss, summary.first_loss);
}

TEST(Trainer, MicroBatchingDoesNotChangeTheResult) {
  // Losses are normalised by global counts and the noise is keyed by the global pair index, so
  // one micro-batch of 4 and four micro-batches of 1 take the same steps (up to rounding).
  auto run = [](int micro) {
    auto cfg = tiny_run("npo");
    cfg.train.micro_batch_size = micro;
    cfg.train.max_steps = 2;
    // A large Adam eps keeps the update smooth in the gradient: with the default 1e-8, tiny
    // gradients (rounding noise) would turn into full ±lr steps.
    cfg.train.eps = 1e-3;
    model::LlamaModel policy(cfg.model, cfg.run.seed);
    const data::ByteTokenizer tokenizer;
    MetricsWriter metrics;
    Trainer trainer(cfg, policy, tokenizer, metrics, test::one_process());
    trainer.train_preference(pairs());
    return policy;
  };
  const auto one = run(4);
  const auto four = run(1);
  const model::LlamaModel start(tiny_run("npo").model, 99);
  EXPECT_GT(max_param_change(one, start), 1e-3);
  EXPECT_LT(max_param_change(one, four), 1e-5);
}

TEST(Trainer, PackedPairsTakeTheStepsOfPaddedOnes) {
  // Packing changes where a pair's tokens sit and which micro-batch it joins, never the step's
  // pairs or the normalisers: SPIN and NPO take the same steps, the second epoch reading the
  // reference log-probs the first kept (NPO running the negatives alone).
  for (const std::string loss : {"spin", "npo"}) {
    SCOPED_TRACE(loss);
    auto run = [&loss](bool packed) {
      auto cfg = tiny_run(loss);
      cfg.train.epochs = 2;
      cfg.train.eps = 1e-3;  // smooth in the gradient (see MicroBatchingDoesNotChangeTheResult)
      cfg.train.pack_pairs = packed;
      cfg.train.pack_length = 40;  // rows of about two pairs
      model::LlamaModel policy(cfg.model, cfg.run.seed);
      const data::ByteTokenizer tokenizer;
      MetricsWriter metrics;
      Trainer trainer(cfg, policy, tokenizer, metrics, test::one_process());
      trainer.train_preference(pairs());
      return policy;
    };
    const auto padded = run(false);
    const model::LlamaModel start(tiny_run(loss).model, 99);
    EXPECT_GT(max_param_change(padded, start), 1e-3);
    EXPECT_LT(max_param_change(run(true), padded), 1e-5);
  }
}

// run.phase_times: every step's metrics line carries each phase's wall time, and the phases
// add up to no more than the step; without it the lines carry none.
std::vector<nlohmann::json> metrics_lines(const config::RunConfig& cfg) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("dnpo_phase_times_" + cfg.train.loss + std::to_string(::getpid()) + ".jsonl");
  std::filesystem::remove(path);
  {
    model::LlamaModel policy(cfg.model, cfg.run.seed);
    const data::ByteTokenizer tokenizer;
    MetricsWriter metrics(path.string());
    Trainer trainer(cfg, policy, tokenizer, metrics, test::one_process());
    if (cfg.train.loss == "sft") {
      trainer.train_sft(sft_records());
    } else {
      trainer.train_preference(pairs());
    }
  }
  std::vector<nlohmann::json> rows;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    rows.push_back(nlohmann::json::parse(line));
  }
  std::filesystem::remove(path);
  return rows;
}

TEST(Trainer, PhaseTimesGoIntoTheMetricsWhenAsked) {
  for (const std::string loss : {"sft", "npo"}) {
    SCOPED_TRACE(loss);
    auto cfg = tiny_run(loss);
    cfg.train.max_steps = 3;
    for (const auto& row : metrics_lines(cfg)) {
      EXPECT_FALSE(row.contains("ms_backward")) << row.dump();
    }
    cfg.run.phase_times = true;
    const auto rows = metrics_lines(cfg);
    ASSERT_EQ(rows.size(), 3U);
    std::vector<std::string> expected = {"ms_batches",
                                         "ms_policy_forward",
                                         "ms_loss",
                                         "ms_backward",
                                         "ms_flush_grads",
                                         "ms_clip_grad_norm",
                                         "ms_optimizer",
                                         "ms_stats"};
    if (loss == "npo") {
      expected.emplace_back("ms_reference_forward");
    }
    // The phases run back to back inside the step's timer, so they add up to no more than the
    // step, however busy the machine. What they leave untimed takes microseconds, but a busy
    // machine may preempt the process right there: the best step, not each, must have its phases
    // cover nearly all of its time.
    double best_share = 0;
    for (const auto& row : rows) {
      double sum = 0;
      for (const auto& [key, value] : row.items()) {
        if (key.rfind("ms_", 0) == 0) {
          EXPECT_GE(value.get<double>(), 0.0) << key;
          sum += value.get<double>();
        }
      }
      for (const auto& key : expected) {
        EXPECT_TRUE(row.contains(key)) << key << " missing from " << row.dump();
      }
      EXPECT_GT(row["ms_backward"].get<double>(), 0.0);
      const double step_ms = row["step_ms"].get<double>();
      EXPECT_LE(sum, step_ms * 1.0001 + 1e-3) << row.dump();
      best_share = std::max(best_share, sum / step_ms);
    }
    EXPECT_GT(best_share, 0.95) << "the most of a step's time its phases cover";
  }
}

// train.reuse_reference: the frozen reference scores each pair once per stage. Three epochs of
// two steps each; phase times show where the reference ran.
config::RunConfig three_epochs(const std::string& loss, bool reuse) {
  auto cfg = tiny_run(loss);
  cfg.train.batch_size = 2;
  cfg.train.micro_batch_size = 1;
  cfg.train.epochs = 3;
  cfg.train.eps = 1e-3;  // smooth updates (see MicroBatchingDoesNotChangeTheResult)
  cfg.train.reuse_reference = reuse;
  cfg.run.phase_times = true;
  return cfg;
}

TEST(Trainer, ReferenceLogProbsAreComputedOncePerPair) {
  for (const std::string loss : {"spin", "npo"}) {
    SCOPED_TRACE(loss);
    const auto reused = metrics_lines(three_epochs(loss, true));
    const auto recomputed = metrics_lines(three_epochs(loss, false));
    ASSERT_EQ(reused.size(), 6U);
    ASSERT_EQ(recomputed.size(), 6U);
    for (std::size_t i = 0; i < reused.size(); ++i) {
      SCOPED_TRACE("step " + std::to_string(i + 1));
      // SPIN needs no reference forward once every pair was seen; NPO still runs it on the
      // negatives (the noise head reads their hidden states).
      const bool first_epoch = i < 2;
      EXPECT_EQ(reused[i].contains("ms_reference_forward"), first_epoch || loss == "npo");
      EXPECT_TRUE(recomputed[i].contains("ms_reference_forward"));
      const double a = reused[i]["loss"].get<double>();
      const double b = recomputed[i]["loss"].get<double>();
      if (first_epoch) {
        EXPECT_EQ(a, b);  // the same computation
      } else {
        // the kept values were computed in other micro-batches (other padding)
        EXPECT_NEAR(a, b, 1e-6 * std::abs(b) + 1e-7);
      }
    }
  }
}

// A stage stopped in its second epoch resumes with the reference log-probs its checkpoint
// carries: the resumed steps run no reference forward, and the run ends where an uninterrupted
// one does, bit for bit.
TEST(Trainer, ResumedStageReusesTheCheckpointedReferenceLogProbs) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("dnpo_reuse_resume_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto cfg = three_epochs("spin", true);
  cfg.checkpoint.every_steps = 3;
  cfg.checkpoint.every_minutes = 0;
  const data::ByteTokenizer tokenizer;
  const auto run = [&](const std::string& name, std::optional<std::string> resume_from) {
    model::LlamaModel policy(cfg.model, cfg.run.seed);
    const auto path = dir / (name + ".jsonl");
    {
      MetricsWriter metrics(path.string());
      Checkpointer checkpointer(cfg.checkpoint, (dir / name).string(), test::one_process());
      Trainer trainer(cfg, policy, tokenizer, metrics, test::one_process());
      trainer.set_checkpointing(&checkpointer, std::move(resume_from));
      trainer.train_preference(pairs());
    }
    std::vector<nlohmann::json> rows;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      rows.push_back(nlohmann::json::parse(line));
    }
    return std::make_pair(std::move(policy), rows);
  };
  const auto [whole, whole_rows] = run("whole", std::nullopt);
  ::setenv(env::kTestFail, "0:3", 1);  // stops as step 4 starts, after the checkpoint of step 3
  EXPECT_THROW(run("stopped", std::nullopt), Error);
  ::unsetenv(env::kTestFail);
  auto resume = cfg.checkpoint;
  resume.resume = "auto";
  const auto checkpoint = resume_checkpoint(resume, (dir / "stopped").string());
  ASSERT_TRUE(checkpoint.has_value());
  EXPECT_EQ(read_position(*checkpoint).steps_done, 3);
  // in the stopped run's directory and metrics file, as dnpo_dist --resume does
  const auto [resumed, resumed_rows] = run("stopped", checkpoint);
  ASSERT_EQ(resumed_rows.size(), 6U);
  for (std::size_t i = 3; i < 6; ++i) {
    EXPECT_FALSE(resumed_rows[i].contains("ms_reference_forward")) << "step " << i + 1;
    EXPECT_EQ(resumed_rows[i]["loss"].get<double>(), whole_rows[i]["loss"].get<double>());
  }
  for (std::size_t i = 0; i < whole.parameters().size(); ++i) {
    EXPECT_TRUE(at::equal(resumed.parameters()[i], whole.parameters()[i])) << "parameter " << i;
  }
  std::filesystem::remove_all(dir);
}

// metrics.jsonl's padding: the share of token slots that were padding. One sample per
// micro-batch pads nothing; one micro-batch of every pair pads each sequence to the longest.
TEST(Trainer, PaddingIsTheShareOfSlotsWithoutATokenInThem) {
  auto sft = tiny_run("sft");
  sft.train.micro_batch_size = 1;
  sft.train.max_steps = 2;
  for (const auto& row : metrics_lines(sft)) {
    EXPECT_EQ(row["padding"].get<double>(), 0.0) << row.dump();
  }
  auto spin = tiny_run("spin");
  spin.train.micro_batch_size = 4;  // the whole step (4 pairs) in one micro-batch
  spin.train.pack_pairs = false;    // padded to the longest (packed: see pair_batches_test)
  spin.train.max_steps = 1;
  const data::ByteTokenizer tokenizer;
  const data::ChatTemplate chat(spin.chat, tokenizer);
  std::vector<std::size_t> lengths;
  for (const auto& p : pairs()) {
    if (p.chosen != p.rejected) {
      const auto prompt = chat.encode_prompt(p.prompt).size();
      lengths.push_back(prompt + chat.encode_response(p.chosen).size());
      lengths.push_back(prompt + chat.encode_response(p.rejected).size());
    }
  }
  const auto longest = *std::max_element(lengths.begin(), lengths.end());
  double real = 0;
  for (const auto n : lengths) {
    real += static_cast<double>(n);
  }
  const auto rows = metrics_lines(spin);
  ASSERT_EQ(rows.size(), 1U);
  const double expected = 1.0 - real / static_cast<double>(lengths.size() * longest);
  EXPECT_GT(expected, 0.1);
  EXPECT_NEAR(rows[0]["padding"].get<double>(), expected, 1e-12);
}

TEST(Trainer, PreferenceRejectsBadInput) {
  auto cfg = tiny_run("sft");
  model::LlamaModel policy(cfg.model, 1);
  const data::ByteTokenizer tokenizer;
  MetricsWriter metrics;
  Trainer sft_trainer(cfg, policy, tokenizer, metrics, test::one_process());
  EXPECT_THROW(sft_trainer.train_preference(pairs()), ConfigError);
  auto spin_cfg = tiny_run("spin");
  Trainer spin_trainer(spin_cfg, policy, tokenizer, metrics, test::one_process());
  EXPECT_THROW(spin_trainer.train_preference({{"1", "p", "same", "same", {}, {}}}), DataError);
  EXPECT_THROW(spin_trainer.train_sft({}), DataError);
  // A model smaller than the tokenizer is refused up front.
  auto small = tiny_run("sft");
  small.model.vocab_size = 100;
  model::LlamaModel small_policy(small.model, 1);
  EXPECT_THROW(Trainer(small, small_policy, tokenizer, metrics, test::one_process()), ConfigError);
}

}  // namespace
}  // namespace dnpo::train
