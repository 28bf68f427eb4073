// The judge server on Boost.Beast (see server.h): an asynchronous accept loop and one thread per
// connection with synchronous reads and writes (over TLS when configured), which keeps fault
// injection (sleeps, partial writes, dropped sockets) plain. A test server, not a production one.
#include "dnpo/judge/server.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <nlohmann/json.hpp>
#include <sys/socket.h>

#include "dnpo/common/env.h"
#include "dnpo/common/error.h"
#include "dnpo/common/log.h"
#include "dnpo/judge/prompt_template.h"
#include "dnpo/judge/rule_judge.h"
#include "tls.h"

namespace dnpo::judge {
namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using Json = nlohmann::json;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

std::string error_body(const std::string& message, const std::string& type, bool wrapped) {
  Json inner{{"message", message}, {"type", type}, {"code", nullptr}};
  return wrapped ? Json{{"error", inner}}.dump() : inner.dump();
}

Response make_response(const Request& req, http::status status, std::string body) {
  Response res{status, req.version()};
  res.set(http::field::server, "dnpo_judge");
  res.set(http::field::content_type, "application/json");
  res.keep_alive(req.keep_alive());
  res.body() = std::move(body);
  res.prepare_payload();
  return res;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

struct JudgeServer::Impl {
  ServerOptions options;
  PromptTemplate tmpl;
  RuleJudge rule;
  std::string api_key;
  asio::io_context ioc;
  tcp::acceptor acceptor{ioc};
  std::atomic<int> connections{0};
  std::mutex mutex;  // guards attempts and log
  std::map<std::uint64_t, int> attempts;
  std::set<tcp::socket*> open_sockets;  // guarded by mutex; shut down when the server stops
  std::ofstream log;
  std::optional<asio::ssl::context> tls;  // set when serving HTTPS
  std::atomic<int> in_flight{0};          // POSTs being answered now (logged with each)

  explicit Impl(ServerOptions o)
      : options(std::move(o)),
        tmpl(load_template(options.template_path)),
        rule(options.imperfection, options.seed) {
    if (!options.api_key_env.empty()) {
      auto key = env::get(options.api_key_env.c_str());
      DNPO_CHECK_WITH(JudgeError,
                      key && !key->empty(),
                      "--api-key-env {}: the environment variable is not set",
                      options.api_key_env);
      api_key = *key;
    }
    DNPO_CHECK_WITH(JudgeError,
                    options.tls_cert.empty() == options.tls_key.empty(),
                    "--tls-cert and --tls-key go together (a certificate and its private key)");
    if (!options.tls_cert.empty()) {
      tls.emplace(tls::server_context(options.tls_cert, options.tls_key));
    }
    if (!options.request_log.empty()) {
      log.open(options.request_log, std::ios::app);
      DNPO_CHECK_WITH(JudgeError, log.good(), "cannot open request log '{}'", options.request_log);
    }
    boost::system::error_code ec;
    const auto address = asio::ip::make_address(options.host, ec);
    DNPO_CHECK_WITH(JudgeError, !ec, "bad --host '{}': {}", options.host, ec.message());
    const tcp::endpoint endpoint{address, static_cast<unsigned short>(options.port)};
    acceptor.open(endpoint.protocol());
    acceptor.set_option(asio::socket_base::reuse_address(true));
    acceptor.bind(endpoint, ec);
    DNPO_CHECK_WITH(
        JudgeError, !ec, "cannot bind {}:{}: {}", options.host, options.port, ec.message());
    acceptor.listen(asio::socket_base::max_listen_connections);
  }

  /// One POST as the log records it: when it arrived and how many were being answered then.
  struct Arrival {
    double t = 0;
    int in_flight = 0;
  };

  void write_log(std::uint64_t body_hash,
                 int attempt,
                 const std::string& outcome,
                 const Arrival& arrival) {
    if (!log.is_open()) {
      return;
    }
    const std::lock_guard<std::mutex> lock(mutex);
    log << Json{{"t", now_s()},
                {"t_start", arrival.t},
                {"in_flight", arrival.in_flight},
                {"body", hex64(body_hash)},
                {"attempt", attempt},
                {"outcome", outcome}}
               .dump()
        << '\n'
        << std::flush;
  }

  void accept() {
    acceptor.async_accept([this](boost::system::error_code ec, tcp::socket socket) {
      if (ec) {
        return;  // acceptor closed
      }
      if (connections.load() >= options.max_connections) {
        boost::system::error_code ignored;
        const std::string busy =
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        asio::write(socket, asio::buffer(busy), ignored);
        socket.close(ignored);
      } else {
        ++connections;
        std::thread([this, s = std::move(socket)]() mutable {
          serve(std::move(s));
          --connections;
        }).detach();
      }
      accept();
    });
  }

  /// The chat-completion reply for a well-formed request, or an error response.
  Response answer(const Request& req, std::uint64_t body_hash) {
    Json body;
    try {
      body = Json::parse(req.body());
    } catch (const Json::exception& e) {
      return make_response(
          req,
          http::status::bad_request,
          error_body(std::string("bad JSON: ") + e.what(), "invalid_request_error", true));
    }
    std::string user;
    const auto messages = body.find("messages");
    if (messages != body.end() && messages->is_array()) {
      for (const auto& m : *messages) {
        if (m.is_object() && m.value("role", "") == "user" && m.contains("content") &&
            m["content"].is_string()) {
          user = m["content"].get<std::string>();
        }
      }
    }
    const auto qa = unrender(tmpl, user);
    std::optional<int> score;
    if (qa) {
      try {
        score = rule.score(qa->first, qa->second);
      } catch (const DataError&) {
        score.reset();
      }
    }
    if (!score) {
      return make_response(req,
                           http::status::bad_request,
                           error_body("the last user message is no judge prompt for a "
                                      "demo-world question (template " +
                                          tmpl.name + ")",
                                      "invalid_request_error",
                                      true));
    }
    const Json reply{
        {"id", "chatcmpl-" + hex64(body_hash)},
        {"object", "chat.completion"},
        {"created", static_cast<std::int64_t>(now_s())},
        {"model", body.value("model", "rule")},
        {"choices",
         Json::array(
             {Json{{"index", 0},
                   {"message", {{"role", "assistant"}, {"content", format_reply(tmpl, *score)}}},
                   {"finish_reason", "stop"}}})},
        {"usage", {{"prompt_tokens", 0}, {"completion_tokens", 0}, {"total_tokens", 0}}}};
    return make_response(req, http::status::ok, reply.dump());
  }

  /// Handles one request arriving over `stream` (the socket itself, or TLS over it); false
  /// when the connection must close.
  template <typename Stream>
  bool handle(Stream& stream, tcp::socket& socket, const Request& req) {
    boost::system::error_code ec;
    const auto send = [&](const Response& res) {
      http::write(stream, res, ec);
      return !ec && res.keep_alive();
    };
    if (req.target() == "/health" && req.method() == http::verb::get) {
      return send(make_response(req, http::status::ok, R"({"status":"ok"})"));
    }
    if (req.target() != "/v1/chat/completions") {
      return send(make_response(
          req, http::status::not_found, error_body("no such endpoint", "not_found", true)));
    }
    if (req.method() != http::verb::post) {
      return send(make_response(req,
                                http::status::method_not_allowed,
                                error_body("use POST", "invalid_request_error", true)));
    }
    const Arrival arrival{now_s(), ++in_flight};
    struct Leave {
      std::atomic<int>& n;
      ~Leave() {
        --n;
      }
    } leave{in_flight};
    const std::uint64_t body_hash = hash_text(req.body());
    int attempt = 0;
    {
      const std::lock_guard<std::mutex> lock(mutex);
      attempt = attempts[body_hash]++;
    }
    if (!api_key.empty() && req[http::field::authorization] != "Bearer " + api_key) {
      write_log(body_hash, attempt, "401", arrival);
      return send(make_response(req,
                                http::status::unauthorized,
                                error_body("invalid API key", "invalid_request_error", true)));
    }
    const Fault fault = draw_fault(options.faults, body_hash, attempt);
    if (options.faults.latency_ms > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(options.faults.latency_ms));
    }
    if (fault != Fault::kNone) {
      write_log(body_hash, attempt, fault_name(fault), arrival);
      return send_fault(stream, socket, req, fault, body_hash);
    }
    auto res = answer(req, body_hash);
    write_log(body_hash, attempt, res.result() == http::status::ok ? "ok" : "400", arrival);
    return send(res);
  }

  /// Answers `req` with the injected `fault` (--fault-* options); false when the connection must
  /// close.
  template <typename Stream>
  bool send_fault(Stream& stream,
                  tcp::socket& socket,
                  const Request& req,
                  Fault fault,
                  std::uint64_t body_hash) {
    boost::system::error_code ec;
    const auto send = [&](const Response& res) {
      http::write(stream, res, ec);
      return !ec && res.keep_alive();
    };
    switch (fault) {
      case Fault::kTooManyRequests: {
        auto res =
            make_response(req,
                          http::status::too_many_requests,
                          error_body("injected rate limit; retry later", "rate_limit_error", true));
        res.set(http::field::retry_after,
                std::to_string(static_cast<int>(std::ceil(options.faults.retry_after_s))));
        return send(res);
      }
      case Fault::kQuota: {  // OpenAI's shape: a 429 that waiting does not cure
        Json inner{{"message", "You exceeded your current quota (injected)"},
                   {"type", "insufficient_quota"},
                   {"code", "insufficient_quota"}};
        return send(
            make_response(req, http::status::too_many_requests, Json{{"error", inner}}.dump()));
      }
      case Fault::kServerError:  // the bare error shape some servers use
        return send(make_response(req,
                                  http::status::internal_server_error,
                                  error_body("injected server error", "server_error", false)));
      case Fault::kDrop:
        socket.shutdown(tcp::socket::shutdown_both, ec);
        return false;
      case Fault::kMalformed: {
        auto res = answer(req, body_hash);
        res.body() = res.body().substr(0, res.body().size() / 2);
        res.prepare_payload();
        return send(res);
      }
      case Fault::kProse: {  // a judge model that declines to give a number
        auto res = answer(req, body_hash);
        if (res.result() == http::status::ok) {
          auto body = Json::parse(res.body());
          body["choices"][0]["message"]["content"] =
              "I cannot rate this answer without more context.";
          res.body() = body.dump();
          res.prepare_payload();
        }
        return send(res);
      }
      case Fault::kSlow: {
        std::ostringstream text;
        text << answer(req, body_hash);
        const std::string all = text.str();
        const auto header_end = all.find("\r\n\r\n") + 4;
        constexpr int kPieces = 10;
        asio::write(stream, asio::buffer(all.data(), header_end), ec);
        const std::size_t piece = (all.size() - header_end + kPieces - 1) / kPieces;
        for (std::size_t at = header_end; at < all.size() && !ec; at += piece) {
          std::this_thread::sleep_for(std::chrono::milliseconds(options.faults.slow_ms / kPieces));
          asio::write(stream, asio::buffer(all.data() + at, std::min(piece, all.size() - at)), ec);
        }
        return !ec && req.keep_alive();
      }
      case Fault::kNone:
        break;
    }
    return send(answer(req, body_hash));
  }

  /// Shuts every open connection down (unblocking its thread) and waits for the threads, so no
  /// thread outlives the server.
  void close_connections() {
    while (connections.load() > 0) {
      {
        const std::lock_guard<std::mutex> lock(mutex);
        for (auto* s : open_sockets) {
          ::shutdown(s->native_handle(), SHUT_RDWR);
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  void serve(tcp::socket socket) {
    {
      const std::lock_guard<std::mutex> lock(mutex);
      open_sockets.insert(&socket);
    }
    if (tls) {
      asio::ssl::stream<tcp::socket&> secure(socket, *tls);
      boost::system::error_code ec;
      secure.handshake(asio::ssl::stream_base::server, ec);
      if (!ec) {  // a refused handshake is the client's to report
        serve_requests(secure, socket);
      }
    } else {
      serve_requests(socket, socket);
    }
    {
      const std::lock_guard<std::mutex> lock(mutex);
      open_sockets.erase(&socket);
    }
    boost::system::error_code ec;
    socket.close(ec);
  }

  template <typename Stream>
  void serve_requests(Stream& stream, tcp::socket& socket) {
    boost::beast::flat_buffer buffer;
    boost::system::error_code ec;
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.body_limit(options.max_body_bytes);
      http::read(stream, buffer, parser, ec);
      if (ec == http::error::body_limit) {
        Request req;
        req.version(11);
        req.keep_alive(false);
        http::write(stream,
                    make_response(req,
                                  http::status::payload_too_large,
                                  error_body("request body over " +
                                                 std::to_string(options.max_body_bytes) + " bytes",
                                             "invalid_request_error",
                                             true)),
                    ec);
        break;
      }
      if (ec || !handle(stream, socket, parser.get())) {
        break;
      }
    }
    socket.shutdown(tcp::socket::shutdown_both, ec);
  }
};

JudgeServer::JudgeServer(ServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

JudgeServer::~JudgeServer() = default;

int JudgeServer::port() const {
  return impl_->acceptor.local_endpoint().port();
}

void JudgeServer::run() {
  asio::signal_set signals(impl_->ioc, SIGINT, SIGTERM);
  signals.async_wait([this](const boost::system::error_code& ec, int /*signal*/) {
    if (!ec) {
      stop();
    }
  });
  impl_->accept();
  impl_->ioc.run();
  impl_->close_connections();
}

void JudgeServer::stop() {
  asio::post(impl_->ioc, [this] {
    boost::system::error_code ec;
    impl_->acceptor.close(ec);
    impl_->ioc.stop();
  });
}

}  // namespace dnpo::judge
