// This host's side of the network, for the errors of a process group that cannot form: its
// interfaces and addresses, and which of them it would use to reach a host. Plain POSIX
// (getaddrinfo, getifaddrs, a connected UDP socket); nothing here sends a packet or throws.
#pragma once

#include <string>

namespace dnpo::dist {

/// This host's interfaces with an IPv4 or IPv6 address (IPv6 link-local ones left out), e.g.
/// "lo 127.0.0.1, mh0 10.77.0.2"; "none" if it has none.
std::string describe_interfaces();

/// The addresses of interface `name`, e.g. "10.77.0.2"; empty if it has none or does not exist.
std::string interface_addresses(const std::string& name);

/// How this host would reach `host` (a name or an address): "via interface mh0, address
/// 10.77.0.2", or why it cannot ("no route: Network is unreachable", "cannot resolve 'x': ...").
std::string describe_route(const std::string& host);

/// Whether `host` resolves to an address one of this host's interfaces holds.
bool is_local_address(const std::string& host);

}  // namespace dnpo::dist
