// JudgeClient: the asynchronous OpenAI-compatible judge client (POST
// {base_url}/v1/chat/completions over HTTP). One I/O thread of its own runs every request:
// keep-alive connections, bounded concurrency, a requests-per-minute limit, a deadline per
// attempt, retries with backoff and jitter on 408/409/429/5xx, transport errors and malformed
// replies (honouring Retry-After), none on other 4xx or an exhausted quota. Asio/Beast stay in
// client.cpp.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "dnpo/config/config.h"
#include "dnpo/judge/judge.h"

namespace dnpo::judge {

class JudgeClient : public Judge {
 public:
  using Callback = std::function<void(JudgeResult)>;

  /// Loads judge.template, reads the API key from the variable judge.api_key_env names (the key
  /// is kept in memory only and never logged), resolves judge.base_url, starts the I/O thread.
  /// Throws ConfigError (bad URL, missing key variable, bad template) or JudgeError (resolve).
  explicit JudgeClient(const config::JudgeConfig& cfg, VerdictBook* cache = nullptr);
  /// Stops the I/O thread; requests still pending are abandoned (their futures throw
  /// std::future_error broken_promise). Blocking.
  ~JudgeClient() override;
  JudgeClient(const JudgeClient&) = delete;
  JudgeClient& operator=(const JudgeClient&) = delete;

  /// Returns at once; under failure_policy "fail" a failed request's future throws JudgeError
  /// naming the endpoint and the last error. Thread-safe.
  std::vector<std::future<JudgeResult>> submit(std::vector<JudgeRequest> batch) override;
  /// Returns at once; `on_done` runs on the client's I/O thread (keep it short; it must not
  /// block or call back into the client synchronously). Thread-safe.
  void submit(JudgeRequest request, Callback on_done);
  JudgeStats stats() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dnpo::judge
