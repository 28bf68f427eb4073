// JudgeClient on Boost.Asio/Beast (see client.h). Everything after submit() runs on one I/O
// thread: a ready queue, at most judge.concurrency attempts in flight, idle keep-alive
// connections (plain or TLS) reused, retries scheduled on timers so a waiting request holds no
// slot.
#include "dnpo/judge/client.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <deque>
#include <thread>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <nlohmann/json.hpp>

#include "dnpo/common/counter_rng.h"
#include "dnpo/common/env.h"
#include "dnpo/common/error.h"
#include "dnpo/judge/backoff.h"
#include "dnpo/judge/prompt_template.h"
#include "dnpo/judge/verdict_book.h"
#include "tls.h"

namespace dnpo::judge {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kMaxReplyBytes = 8U << 20U;

struct Url {
  bool https = false;
  std::string host;
  std::string port;
  std::string path;  // prefix before /v1/chat/completions, without a trailing '/'
};

Url parse_url(const std::string& url) {
  const auto scheme_end = url.find("://");
  const std::string scheme = url.substr(0, scheme_end);
  DNPO_CHECK_WITH(ConfigError,
                  scheme_end != std::string::npos && (scheme == "http" || scheme == "https"),
                  "judge.base_url = \"{}\": expected http[s]://host[:port][/path]",
                  url);
  const std::string rest = url.substr(scheme_end + 3);
  const auto slash = rest.find('/');
  const std::string authority = rest.substr(0, slash);
  Url u;
  u.https = scheme == "https";
  u.path = slash == std::string::npos ? "" : rest.substr(slash);
  while (!u.path.empty() && u.path.back() == '/') {
    u.path.pop_back();
  }
  const auto colon = authority.rfind(':');
  if (colon != std::string::npos && authority.find(']', colon) == std::string::npos) {
    u.host = authority.substr(0, colon);
    u.port = authority.substr(colon + 1);
  } else {
    u.host = authority;
    u.port = u.https ? "443" : "80";
  }
  if (u.host.size() > 2 && u.host.front() == '[' && u.host.back() == ']') {
    u.host = u.host.substr(1, u.host.size() - 2);
  }
  DNPO_CHECK_WITH(ConfigError,
                  !u.host.empty(),
                  "judge.base_url = \"{}\": no host; expected http[s]://host[:port]",
                  url);
  return u;
}

/// The message of an error body in either shape ({"error": {"message": ...}} or bare
/// {"message": ...}, or {"error": "text"}), and whether it reports an exhausted quota.
std::pair<std::string, bool> error_message(const std::string& body) {
  const auto j = Json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return {body.substr(0, 200), false};
  }
  Json e = j;
  if (j.contains("error")) {
    if (j["error"].is_string()) {
      return {j["error"].get<std::string>(), false};
    }
    e = j["error"];
  }
  std::string message = e.is_object() && e.contains("message") && e["message"].is_string()
                            ? e["message"].get<std::string>()
                            : body.substr(0, 200);
  const auto field = [&](const char* name) {
    return e.is_object() && e.contains(name) && e[name].is_string() ? e[name].get<std::string>()
                                                                    : std::string();
  };
  const bool quota = field("code") == "insufficient_quota" || field("type") == "insufficient_quota";
  return {message, quota};
}

bool retryable_status(int status) {
  return status == 408 || status == 409 || status == 429 || status >= 500;
}

}  // namespace

struct JudgeClient::Impl {
  struct Job {
    JudgeRequest request;
    std::string body;
    std::uint64_t body_hash = 0;
    int attempts = 0;
    std::string last_error;
    Callback done;
  };
  using JobPtr = std::shared_ptr<Job>;
  /// A keep-alive connection, plain or TLS.
  struct Conn {
    Conn(asio::io_context& ioc, asio::ssl::context* tls) {
      if (tls != nullptr) {
        secure.emplace(ioc, *tls);
      } else {
        plain.emplace(ioc);
      }
    }
    beast::tcp_stream& tcp() {
      return secure ? beast::get_lowest_layer(*secure) : *plain;
    }
    /// Calls f with the stream HTTP goes over.
    template <typename F>
    void with_stream(F&& f) {
      if (secure) {
        f(*secure);
      } else {
        f(*plain);
      }
    }
    std::optional<beast::tcp_stream> plain;
    std::optional<beast::ssl_stream<beast::tcp_stream>> secure;
    beast::flat_buffer buffer;
    bool connected = false;
  };
  using ConnPtr = std::shared_ptr<Conn>;

  config::JudgeConfig cfg;
  PromptTemplate tmpl;
  VerdictBook* cache;
  std::string scope;  // of this judge's verdicts in the cache
  std::string api_key;
  Url url;
  std::optional<asio::ssl::context> tls;  // set for https:// endpoints
  std::string target;
  BackoffPolicy backoff;
  asio::io_context ioc;
  asio::executor_work_guard<asio::io_context::executor_type> work{ioc.get_executor()};
  tcp::resolver::results_type endpoints;
  std::thread thread;

  // I/O thread only:
  std::deque<JobPtr> ready;
  std::vector<ConnPtr> idle;
  int active = 0;
  Clock::time_point next_slot = Clock::now();

  // counters (any thread)
  std::atomic<std::int64_t> submitted{0}, scored{0}, cache_hits{0}, spin_fallback{0}, dropped{0},
      failed{0}, attempts{0}, retries{0}, resolved{0};

  Impl(const config::JudgeConfig& c, VerdictBook* cache_in)
      : cfg(c),
        tmpl(load_template(c.prompt_template)),
        cache(cache_in),
        scope(judge_scope(c.model, tmpl.hash)),
        url(parse_url(c.base_url)) {
    target = url.path + "/v1/chat/completions";
    if (url.https) {
      tls.emplace(tls::client_context(cfg.tls_verify, cfg.ca_file));
    }
    if (!cfg.api_key_env.empty()) {
      auto key = env::get(cfg.api_key_env.c_str());
      DNPO_CHECK_WITH(
          ConfigError,
          key && !key->empty(),
          "judge.api_key_env = \"{}\": that environment variable is not set or empty; hint: export "
          "it before starting, or set judge.api_key_env = \"\" for a server without keys",
          cfg.api_key_env);
      api_key = *key;
    }
    backoff = BackoffPolicy{cfg.backoff_base_s, cfg.backoff_max_s, 2.0};
    tcp::resolver resolver(ioc);
    boost::system::error_code ec;
    endpoints = resolver.resolve(url.host, url.port, ec);
    DNPO_CHECK_WITH(JudgeError,
                    !ec,
                    "judge endpoint {}: cannot resolve {}: {}",
                    cfg.base_url,
                    url.host,
                    ec.message());
    thread = std::thread([this] { ioc.run(); });
  }

  ~Impl() {
    work.reset();
    ioc.stop();
    if (thread.joinable()) {
      thread.join();
    }
  }

  std::string make_body(const JudgeRequest& r) const {
    Json messages = Json::array();
    if (!tmpl.system.empty()) {
      messages.push_back({{"role", "system"}, {"content", tmpl.system}});
    }
    messages.push_back({{"role", "user"}, {"content", render(tmpl, r.question, r.answer)}});
    const Json body{{"model", cfg.model},
                    {"messages", messages},
                    {"temperature", cfg.temperature},
                    {"max_tokens", cfg.max_tokens}};
    return body.dump(-1, ' ', false, Json::error_handler_t::replace);
  }

  // --- results ---

  void finish(const JobPtr& job, JudgeResult result) {
    result.attempts = job->attempts;
    result.body_hash = job->body_hash;
    ++resolved;
    job->done(std::move(result));
  }

  void finish_scored(const JobPtr& job, double score) {
    if (cache != nullptr) {
      cache->insert({scope, job->request.question, job->request.answer}, score);
    }
    ++scored;
    JudgeResult r;
    r.score = score;
    finish(job, std::move(r));
  }

  void finish_failed(const JobPtr& job, const std::string& error) {
    JudgeResult r;
    r.error = "judge endpoint " + cfg.base_url + ": " + error + " (after " +
              std::to_string(job->attempts) + " attempts, body " + hex64(job->body_hash) + ")";
    if (cfg.failure_policy == "spin") {
      r.outcome = Outcome::kSpinFallback;
      ++spin_fallback;
    } else if (cfg.failure_policy == "drop") {
      r.outcome = Outcome::kDropped;
      ++dropped;
    } else {
      r.outcome = Outcome::kFailed;
      ++failed;
    }
    finish(job, std::move(r));
  }

  /// A retryable failure: another attempt after the backoff, or the failure policy.
  void retry_or_fail(const JobPtr& job, const std::string& error, std::optional<double> after) {
    job->last_error = error;
    const int retry = job->attempts - 1;
    if (retry >= cfg.max_retries) {
      finish_failed(job, error);
      return;
    }
    ++retries;
    const std::uint64_t key = fold_key(mix64(cfg.seed), job->body_hash);
    const double delay = backoff_delay_s(backoff, retry, key, after);
    auto timer = std::make_shared<asio::steady_timer>(
        ioc, std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(delay)));
    timer->async_wait([this, job, timer](const boost::system::error_code&) {
      ready.push_front(job);
      pump();
    });
  }

  // --- attempts ---

  void pump() {
    while (active < cfg.concurrency && !ready.empty()) {
      JobPtr job = ready.front();
      ready.pop_front();
      ++active;
      start(job);
    }
  }

  void start(const JobPtr& job) {
    if (cfg.requests_per_minute > 0) {
      const auto interval = std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(60.0 / cfg.requests_per_minute));
      const auto now = Clock::now();
      const auto slot = std::max(now, next_slot);
      next_slot = slot + interval;
      if (slot > now) {
        auto timer = std::make_shared<asio::steady_timer>(ioc, slot);
        timer->async_wait([this, job, timer](const boost::system::error_code&) { send(job); });
        return;
      }
    }
    send(job);
  }

  /// An attempt that ended without a reply: the connection goes, its slot frees, and the job is
  /// retried (after the backoff, or `after`) or — when another attempt cannot fix it, e.g. a
  /// refused certificate — gets the failure policy at once.
  void attempt_failed(const JobPtr& job,
                      const ConnPtr& conn,
                      const std::string& error,
                      std::optional<double> after = std::nullopt,
                      bool retryable = true) {
    boost::system::error_code ignored;
    conn->tcp().socket().close(ignored);
    --active;
    if (retryable) {
      retry_or_fail(job, error, after);
    } else {
      finish_failed(job, error);
    }
    pump();
  }

  /// TLS: SNI, the peer-name check and the handshake, then `then`.
  template <typename Then>
  void handshake(const JobPtr& job, const ConnPtr& conn, Then then) {
    if (!tls::prepare_client(conn->secure->native_handle(), url.host, cfg.tls_verify)) {
      attempt_failed(job, conn, "TLS setup failed (out of memory?)");
      return;
    }
    conn->secure->async_handshake(
        asio::ssl::stream_base::client, [this, job, conn, then](beast::error_code ec) {
          if (!ec) {
            then();
            return;
          }
          const std::string where = "TLS handshake with " + url.host + ":" + url.port;
          const std::string problem = tls::certificate_problem(conn->secure->native_handle());
          if (!problem.empty()) {
            attempt_failed(job,
                           conn,
                           where + " failed: the server's certificate was refused (" + problem +
                               "); hint: judge.ca_file = \"" + cfg.ca_file +
                               "\" must hold the CA that signed it (\"\" = the system's CAs), "
                               "and the certificate must name " +
                               url.host,
                           std::nullopt,
                           /*retryable=*/false);
            return;
          }
          attempt_failed(job, conn, where + " failed: " + ec.message());
        });
  }

  void send(const JobPtr& job) {
    ConnPtr conn;
    if (!idle.empty()) {
      conn = idle.back();
      idle.pop_back();
    } else {
      conn = std::make_shared<Conn>(ioc, tls ? &*tls : nullptr);
    }
    ++job->attempts;
    ++attempts;
    auto req = std::make_shared<http::request<http::string_body>>(http::verb::post, target, 11);
    req->set(http::field::host, url.host);
    req->set(http::field::user_agent, "dnpo-judge");
    req->set(http::field::content_type, "application/json");
    if (!api_key.empty()) {
      req->set(http::field::authorization, "Bearer " + api_key);
    }
    req->keep_alive(true);
    req->body() = job->body;
    req->prepare_payload();
    // One deadline covers connect, handshake, send and reply (TLS runs over the tcp_stream).
    conn->tcp().expires_after(
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg.timeout_s)));
    auto write = [this, job, conn, req] {
      conn->with_stream([&](auto& stream) {
        http::async_write(stream, *req, [this, job, conn, req](beast::error_code ec, std::size_t) {
          if (ec) {
            attempt_failed(job, conn, "sending failed: " + ec.message());
            return;
          }
          read(job, conn);
        });
      });
    };
    if (conn->connected) {
      write();
      return;
    }
    conn->tcp().async_connect(endpoints,
                              [this, job, conn, write](beast::error_code ec, const auto&) {
                                if (ec) {
                                  attempt_failed(job, conn, "connect failed: " + ec.message());
                                  return;
                                }
                                conn->connected = true;
                                if (conn->secure) {
                                  handshake(job, conn, write);
                                } else {
                                  write();
                                }
                              });
  }

  void read(const JobPtr& job, const ConnPtr& conn) {
    auto parser = std::make_shared<http::response_parser<http::string_body>>();
    parser->body_limit(kMaxReplyBytes);
    conn->with_stream([&](auto& stream) {
      http::async_read(stream,
                       conn->buffer,
                       *parser,
                       [this, job, conn, parser](beast::error_code ec, std::size_t) {
                         if (ec == beast::error::timeout) {
                           attempt_failed(job,
                                          conn,
                                          "deadline of " + std::to_string(cfg.timeout_s) +
                                              " s exceeded (judge.timeout_s)");
                           return;
                         }
                         if (ec) {
                           attempt_failed(job, conn, "reading the reply failed: " + ec.message());
                           return;
                         }
                         on_response(job, conn, parser->release());
                       });
    });
  }

  void on_response(const JobPtr& job, const ConnPtr& conn, http::response<http::string_body> res) {
    if (res.keep_alive()) {
      idle.push_back(conn);
    } else {
      boost::system::error_code ignored;
      conn->tcp().socket().close(ignored);
    }
    --active;
    const int status = res.result_int();
    if (status == 200) {
      on_reply(job, res.body());
    } else {
      auto [message, quota] = error_message(res.body());
      const std::string error = "HTTP " + std::to_string(status) + ": " + message;
      if (retryable_status(status) && !quota) {
        std::optional<double> after;
        const auto header = res[http::field::retry_after];
        if (!header.empty()) {
          char* end = nullptr;
          const std::string text(header);
          const double v = std::strtod(text.c_str(), &end);
          if (end != text.c_str() && *end == '\0' && std::isfinite(v) && v >= 0) {
            after = v;  // HTTP-date values are ignored (the backoff applies)
          }
        }
        retry_or_fail(job, error, after);
      } else {
        finish_failed(job, error);
      }
    }
    pump();
  }

  void on_reply(const JobPtr& job, const std::string& body) {
    const auto content = chat_reply_text(body);
    if (!content) {
      retry_or_fail(job, "malformed reply (no choices[0].message.content string)", std::nullopt);
      return;
    }
    const std::string& text = *content;
    const auto score = parse_score(tmpl, text);
    if (!score) {
      finish_failed(
          job,
          "unparseable judge reply for template " + tmpl.name + ": \"" +
              Json(text.substr(0, 80)).dump(-1, ' ', false, Json::error_handler_t::replace) + "\"");
      return;
    }
    finish_scored(job, score_0_100(tmpl, *score));
  }

  void enqueue(JudgeRequest request, Callback done) {
    ++submitted;
    if (cache != nullptr) {
      if (auto hit = cache->find({scope, request.question, request.answer})) {
        ++cache_hits;
        ++scored;
        ++resolved;
        JudgeResult r;
        r.score = *hit;
        r.cached = true;
        done(std::move(r));
        return;
      }
    }
    auto job = std::make_shared<Job>();
    job->body = make_body(request);
    job->body_hash = hash_text(job->body);
    job->request = std::move(request);
    job->done = std::move(done);
    asio::post(ioc, [this, job] {
      ready.push_back(job);
      pump();
    });
  }
};

JudgeClient::JudgeClient(const config::JudgeConfig& cfg, VerdictBook* cache)
    : impl_(std::make_unique<Impl>(cfg, cache)) {}

JudgeClient::~JudgeClient() = default;

std::vector<std::future<JudgeResult>> JudgeClient::submit(std::vector<JudgeRequest> batch) {
  std::vector<std::future<JudgeResult>> out;
  out.reserve(batch.size());
  for (auto& request : batch) {
    auto promise = std::make_shared<std::promise<JudgeResult>>();
    out.push_back(promise->get_future());
    impl_->enqueue(std::move(request), [promise](JudgeResult r) {
      if (r.outcome == Outcome::kFailed) {
        promise->set_exception(std::make_exception_ptr(JudgeError(r.error)));
      } else {
        promise->set_value(std::move(r));
      }
    });
  }
  return out;
}

void JudgeClient::submit(JudgeRequest request, Callback on_done) {
  impl_->enqueue(std::move(request), std::move(on_done));
}

JudgeStats JudgeClient::stats() const {
  const Impl& i = *impl_;
  JudgeStats s;
  s.submitted = i.submitted;
  s.scored = i.scored;
  s.cache_hits = i.cache_hits;
  s.spin_fallback = i.spin_fallback;
  s.dropped = i.dropped;
  s.failed = i.failed;
  s.attempts = i.attempts;
  s.retries = i.retries;
  s.pending = i.submitted - i.resolved;
  return s;
}

}  // namespace dnpo::judge
