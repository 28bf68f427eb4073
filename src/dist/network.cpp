// This host's interfaces and routes as text for error messages (network.h); never throws.
#include "network.h"

#include <array>
#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace dnpo::dist {
namespace {

struct InterfaceAddress {
  std::string interface;
  std::string address;
};

// An address in text ("10.77.0.2", "fd00::2"); empty for families other than IPv4 and IPv6.
std::string address_text(const sockaddr* sa) {
  std::array<char, INET6_ADDRSTRLEN> text{};
  const void* raw = nullptr;
  if (sa->sa_family == AF_INET) {
    raw = &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr;
  } else if (sa->sa_family == AF_INET6) {
    raw = &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr;
  } else {
    return {};
  }
  return inet_ntop(sa->sa_family, raw, text.data(), text.size()) != nullptr ? text.data() : "";
}

std::vector<InterfaceAddress> interface_list() {
  ifaddrs* first = nullptr;
  if (getifaddrs(&first) != 0) {
    return {};
  }
  const std::unique_ptr<ifaddrs, void (*)(ifaddrs*)> owner(first, freeifaddrs);
  std::vector<InterfaceAddress> out;
  for (const ifaddrs* i = first; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr) {
      continue;
    }
    if (i->ifa_addr->sa_family == AF_INET6 &&
        IN6_IS_ADDR_LINKLOCAL(&reinterpret_cast<const sockaddr_in6*>(i->ifa_addr)->sin6_addr)) {
      continue;
    }
    auto text = address_text(i->ifa_addr);
    if (!text.empty()) {
      out.push_back({i->ifa_name, std::move(text)});
    }
  }
  return out;
}

// The first address `host` resolves to, or the resolver's error.
struct Resolved {
  sockaddr_storage address{};
  socklen_t length = 0;
  std::string error;
};

Resolved resolve(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  Resolved out;
  const int rc = getaddrinfo(host.c_str(), "9", &hints, &found);
  if (rc != 0 || found == nullptr) {
    out.error = "cannot resolve '" + host + "': " + gai_strerror(rc);
    return out;
  }
  std::memcpy(&out.address, found->ai_addr, found->ai_addrlen);
  out.length = found->ai_addrlen;
  freeaddrinfo(found);
  return out;
}

std::string interface_of(const std::string& address) {
  for (const auto& a : interface_list()) {
    if (a.address == address) {
      return a.interface;
    }
  }
  return {};
}

}  // namespace

std::string describe_interfaces() {
  std::vector<std::pair<std::string, std::string>> by_interface;  // in getifaddrs' order
  for (const auto& a : interface_list()) {
    auto it = by_interface.begin();
    while (it != by_interface.end() && it->first != a.interface) {
      ++it;
    }
    if (it == by_interface.end()) {
      by_interface.emplace_back(a.interface, a.address);
    } else {
      it->second += " " + a.address;
    }
  }
  std::string out;
  for (const auto& [name, addresses] : by_interface) {
    out.append(out.empty() ? "" : ", ").append(name).append(" ").append(addresses);
  }
  return out.empty() ? "none" : out;
}

std::string interface_addresses(const std::string& name) {
  std::string out;
  for (const auto& a : interface_list()) {
    if (a.interface == name) {
      out.append(out.empty() ? "" : ", ").append(a.address);
    }
  }
  return out;
}

std::string describe_route(const std::string& host) {
  const auto target = resolve(host);
  if (!target.error.empty()) {
    return target.error;
  }
  // connect() on a UDP socket only picks the route and the source address: no packet leaves.
  const int fd = socket(target.address.ss_family, SOCK_DGRAM, 0);
  if (fd < 0) {
    return std::string("no socket: ") + std::strerror(errno);
  }
  std::string out;
  sockaddr_storage local{};
  socklen_t length = sizeof(local);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&target.address), target.length) != 0) {
    out = std::string("no route: ") + std::strerror(errno);
  } else if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length) != 0) {
    out = std::string("no local address: ") + std::strerror(errno);
  } else {
    const auto address = address_text(reinterpret_cast<const sockaddr*>(&local));
    const auto interface = interface_of(address);
    out = "via interface " + (interface.empty() ? std::string("?") : interface) + ", address " +
          address;
  }
  close(fd);
  return out;
}

bool is_local_address(const std::string& host) {
  const auto target = resolve(host);
  if (!target.error.empty()) {
    return false;
  }
  return !interface_of(address_text(reinterpret_cast<const sockaddr*>(&target.address))).empty();
}

}  // namespace dnpo::dist
