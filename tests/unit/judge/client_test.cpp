// JudgeClient against an in-process JudgeServer on 127.0.0.1: scores, the callback interface and
// the cache, the requests-per-minute limit, an unreachable judge, a reply that is not a score,
// an empty and an oversized answer, and configuration errors.
#include "dnpo/judge/client.h"

#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "dnpo/common/error.h"
#include "dnpo/data/demo_world.h"
#include "dnpo/judge/faults.h"
#include "dnpo/judge/server.h"
#include "dnpo/judge/verdict_book.h"

namespace dnpo::judge {
namespace {

const std::string kTemplate = std::string(DNPO_SOURCE_DIR) + "/configs/judge/default_0_100.txt";

class ServerThread {
 public:
  explicit ServerThread(FaultOptions faults = {}, std::size_t max_body_bytes = 1U << 20U)
      : server_(options(faults, max_body_bytes)), thread_([this] { server_.run(); }) {}
  ~ServerThread() {
    server_.stop();
    thread_.join();
  }
  ServerThread(const ServerThread&) = delete;
  ServerThread& operator=(const ServerThread&) = delete;
  config::JudgeConfig client_config() const {
    config::JudgeConfig cfg;
    cfg.backend = "http";
    cfg.base_url = "http://127.0.0.1:" + std::to_string(server_.port());
    cfg.prompt_template = kTemplate;
    cfg.timeout_s = 10;
    return cfg;
  }

 private:
  static ServerOptions options(const FaultOptions& faults, std::size_t max_body_bytes) {
    ServerOptions o;
    o.template_path = kTemplate;
    o.faults = faults;
    o.max_body_bytes = max_body_bytes;
    return o;
  }
  JudgeServer server_;
  std::thread thread_;
};

TEST(JudgeClient, ScoresLikeTheRuleJudgeAndCaches) {
  const ServerThread server;
  VerdictBook cache;
  JudgeClient client(server.client_config(), &cache);
  auto futures = client.submit({{"123+456=", "579"}, {"rev abc", "cab"}});
  const auto r0 = futures[0].get();
  EXPECT_EQ(r0.outcome, Outcome::kScored);
  EXPECT_EQ(r0.score, 100);
  EXPECT_EQ(r0.attempts, 1);
  EXPECT_EQ(futures[1].get().score, data::verify_answer("rev abc", "cab"));
  std::promise<JudgeResult> done;
  client.submit({"123+456=", "579"}, [&done](JudgeResult r) { done.set_value(r); });
  const auto again = done.get_future().get();
  EXPECT_TRUE(again.cached);
  EXPECT_EQ(again.score, 100);
  const auto s = client.stats();
  EXPECT_EQ(s.submitted, 3);
  EXPECT_EQ(s.scored, 3);
  EXPECT_EQ(s.cache_hits, 1);
  EXPECT_EQ(s.attempts, 2);
  EXPECT_EQ(s.pending, 0);
}

TEST(JudgeClient, RequestsPerMinuteHold) {
  const ServerThread server;
  auto cfg = server.client_config();
  cfg.requests_per_minute = 600;  // one attempt every 100 ms
  JudgeClient client(cfg);
  const auto start = std::chrono::steady_clock::now();
  std::vector<JudgeRequest> batch;
  for (int i = 0; i < 6; ++i) {
    batch.push_back({std::to_string(i) + "+1=", std::to_string(i + 1)});
  }
  for (auto& f : client.submit(batch)) {
    EXPECT_EQ(f.get().score, 100);
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(elapsed, 0.49);  // 6 attempts: the last starts >= 500 ms after the first
}

TEST(JudgeClient, NonRetryableErrorsGiveThePolicyOutcome) {
  const ServerThread server;
  auto cfg = server.client_config();
  cfg.failure_policy = "drop";
  JudgeClient client(cfg);
  const auto r = client.submit({{"not a demo question", "x"}})[0].get();  // server: 400
  EXPECT_EQ(r.outcome, Outcome::kDropped);
  EXPECT_EQ(r.attempts, 1);
  EXPECT_NE(r.error.find("HTTP 400"), std::string::npos) << r.error;
  cfg.failure_policy = "fail";
  JudgeClient failing(cfg);
  EXPECT_THROW(failing.submit({{"not a demo question", "x"}})[0].get(), JudgeError);
  EXPECT_EQ(failing.stats().failed, 1);
}

TEST(JudgeClient, AnUnreachableJudgeGivesThePolicyOutcomeAfterItsRetries) {
  config::JudgeConfig cfg;
  cfg.backend = "http";
  cfg.prompt_template = kTemplate;
  cfg.base_url = "http://127.0.0.1:9";  // discard: nothing listens
  cfg.max_retries = 2;
  cfg.backoff_base_s = 0.01;
  cfg.timeout_s = 10;
  JudgeClient client(cfg);
  const auto r = client.submit({{"1+1=", "2"}})[0].get();
  EXPECT_EQ(r.outcome, Outcome::kSpinFallback);  // the default judge.failure_policy
  EXPECT_EQ(r.attempts, 3);
  EXPECT_NE(r.error.find("judge endpoint http://127.0.0.1:9"), std::string::npos) << r.error;
  EXPECT_NE(r.error.find("connect failed"), std::string::npos) << r.error;
  cfg.failure_policy = "fail";
  JudgeClient failing(cfg);
  EXPECT_THROW(failing.submit({{"1+1=", "2"}})[0].get(), JudgeError);
}

TEST(JudgeClient, AReplyWithoutAScoreIsNotTakenForOne) {
  FaultOptions prose;
  prose.p_prose = 1;  // every reply: well-formed JSON, prose content
  const ServerThread server(prose);
  JudgeClient client(server.client_config());
  const auto r = client.submit({{"123+456=", "579"}})[0].get();
  EXPECT_EQ(r.outcome, Outcome::kSpinFallback);
  EXPECT_EQ(r.attempts, 1);  // the same prompt would get the same prose: not retried
  EXPECT_NE(r.error.find("unparseable judge reply"), std::string::npos) << r.error;
  EXPECT_NE(r.error.find("I cannot rate this answer"), std::string::npos) << r.error;
}

TEST(JudgeClient, AnOversizedAnswerIsRefusedOnceNotRetried) {
  const ServerThread server({}, 4096);  // a server that takes requests of up to 4 KB
  JudgeClient client(server.client_config());
  const auto r = client.submit({{"123+456=", std::string(8000, '9')}})[0].get();
  EXPECT_EQ(r.outcome, Outcome::kSpinFallback);
  EXPECT_EQ(r.attempts, 1);
  EXPECT_NE(r.error.find("HTTP 413"), std::string::npos) << r.error;
  EXPECT_EQ(client.submit({{"123+456=", ""}})[0].get().outcome, Outcome::kScored);  // empty: 0
}

TEST(JudgeClient, ConfigErrorsAreClear) {
  config::JudgeConfig cfg;
  cfg.prompt_template = kTemplate;
  cfg.base_url = "ftp://127.0.0.1";
  EXPECT_THROW(JudgeClient{cfg}, ConfigError);
  cfg.base_url = "https://127.0.0.1:9";
  cfg.ca_file = "/nonexistent/ca.pem";
  try {
    JudgeClient client(cfg);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("judge.ca_file = \"/nonexistent/ca.pem\""),
              std::string::npos)
        << e.what();
  }
  cfg.ca_file = "";
  cfg.base_url = "http://127.0.0.1:9";
  cfg.api_key_env = "DNPO_TEST_SURELY_UNSET_KEY_VARIABLE";
  try {
    JudgeClient client(cfg);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("judge.api_key_env"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dnpo::judge
