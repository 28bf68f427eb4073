// The network descriptions dist/'s start-up errors name (src/dist/network.h): this host's
// interfaces, and the interface and address it would reach a host by. Uses only the loopback.
#include "network.h"

#include <gtest/gtest.h>

namespace dnpo::dist {
namespace {

TEST(Network, LoopbackIsListedWithItsAddress) {
  EXPECT_NE(describe_interfaces().find("lo 127.0.0.1"), std::string::npos) << describe_interfaces();
  EXPECT_NE(interface_addresses("lo").find("127.0.0.1"), std::string::npos);
}

TEST(Network, UnknownInterfaceHasNoAddress) {
  EXPECT_EQ(interface_addresses("nosuch0"), "");
}

TEST(Network, RouteToLoopbackNamesInterfaceAndAddress) {
  EXPECT_EQ(describe_route("127.0.0.1"), "via interface lo, address 127.0.0.1");
}

TEST(Network, LocalAddressesAreRecognised) {
  EXPECT_TRUE(is_local_address("127.0.0.1"));
  // 203.0.113.0/24 is TEST-NET-3 (RFC 5737): documentation only, held by no host.
  EXPECT_FALSE(is_local_address("203.0.113.7"));
}

}  // namespace
}  // namespace dnpo::dist
