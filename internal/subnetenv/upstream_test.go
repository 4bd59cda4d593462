package subnetenv

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The files below are written by hand, byte for byte, from upstream
// flanneld's subnet.env writer (v0.28.9, pkg/subnet WriteSubnetFile): the
// IPv4 pair when IPv4 is enabled, the IPv6 pair when IPv6 is, then MTU and
// masquerade as %t, no quotes, "\n" after every line. The IPv4 subnet is
// the lease's first address with the lease's length; networks are masked.
const (
	upstreamV4 = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n" +
		"FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
	upstreamV4NoMasq = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n" +
		"FLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n"
	upstreamDual = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n" +
		"FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42:1::1/64\n" +
		"FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
	// An IPv6-only node (EnableIPv4 false): no FLANNEL_NETWORK or
	// FLANNEL_SUBNET at all.
	upstreamV6Only = "FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42:1::1/64\n" +
		"FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
	// Several cluster networks per family, comma-separated, as the
	// multi-cluster-CIDR releases wrote them and as upstream's CNI plugin
	// and flanneld's read-back both split them.
	upstreamMultiNetwork = "FLANNEL_NETWORK=10.42.0.0/16,10.43.0.0/16\nFLANNEL_SUBNET=10.42.3.1/24\n" +
		"FLANNEL_IPV6_NETWORK=fd00:42::/56,fd00:43::/56\nFLANNEL_IPV6_SUBNET=fd00:42:0:3::1/64\n" +
		"FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
)

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

var (
	envUpstreamV4 = Env{Networks: pfx("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.1.1/24"),
		MTU: 1450, IPMasq: true}
	envUpstreamDual = Env{Networks: pfx("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.1.1/24"),
		IPv6Networks: pfx("2001:cafe:42::/56"), IPv6Subnet: netip.MustParsePrefix("2001:cafe:42:1::1/64"),
		MTU: 1450, IPMasq: true}
	envUpstreamV6Only = Env{IPv6Networks: pfx("2001:cafe:42::/56"),
		IPv6Subnet: netip.MustParsePrefix("2001:cafe:42:1::1/64"), MTU: 1430, IPMasq: true}
	envUpstreamMulti = Env{Networks: pfx("10.42.0.0/16", "10.43.0.0/16"), Subnet: netip.MustParsePrefix("10.42.3.1/24"),
		IPv6Networks: pfx("fd00:42::/56", "fd00:43::/56"), IPv6Subnet: netip.MustParsePrefix("fd00:42:0:3::1/64"),
		MTU: 1450, IPMasq: true}
)

func TestParseUpstreamFiles(t *testing.T) {
	tests := []struct {
		name, file string
		want       Env
	}{
		{"ipv4", upstreamV4, envUpstreamV4},
		{"ipv4-no-masquerade", upstreamV4NoMasq, Env{Networks: pfx("10.244.0.0/16"),
			Subnet: netip.MustParsePrefix("10.244.1.1/24"), MTU: 1500, IPMasq: false}},
		{"dual-stack", upstreamDual, envUpstreamDual},
		{"ipv6-only", upstreamV6Only, envUpstreamV6Only},
		{"several-networks", upstreamMultiNetwork, envUpstreamMulti},
		// Upstream's plugin keeps one of each network listed twice.
		{"repeated-network", "FLANNEL_NETWORK=10.42.0.0/16,10.42.0.0/16\nFLANNEL_SUBNET=10.42.3.1/24\n" +
			"FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
			Env{Networks: pfx("10.42.0.0/16"), Subnet: netip.MustParsePrefix("10.42.3.1/24"), MTU: 1450, IPMasq: true}},
		// Forms upstream's writer does not produce but an operator's hand
		// edit or another tool may; flanneld's own reader (godotenv)
		// accepts them, and so do we.
		{"no-trailing-newline", upstreamV4[:len(upstreamV4)-1], envUpstreamV4},
		{"quoted", "FLANNEL_NETWORK=\"10.244.0.0/16\"\nFLANNEL_SUBNET='10.244.1.1/24'\n" +
			"FLANNEL_MTU=\"1450\"\nFLANNEL_IPMASQ=\"true\"\n", envUpstreamV4},
		{"other-order", "FLANNEL_IPMASQ=true\nFLANNEL_MTU=1450\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_NETWORK=10.244.0.0/16\n",
			envUpstreamV4},
		{"crlf", "FLANNEL_NETWORK=10.244.0.0/16\r\nFLANNEL_SUBNET=10.244.1.1/24\r\nFLANNEL_MTU=1450\r\nFLANNEL_IPMASQ=true\r\n",
			envUpstreamV4},
		{"space-after-comma", "FLANNEL_NETWORK=10.42.0.0/16, 10.43.0.0/16\nFLANNEL_SUBNET=10.42.3.1/24\n" +
			"FLANNEL_IPV6_NETWORK=fd00:42::/56, fd00:43::/56\nFLANNEL_IPV6_SUBNET=fd00:42:0:3::1/64\n" +
			"FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", envUpstreamMulti},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, equatePrefixes); diff != "" {
				t.Errorf("Parse (-want +got):\n%s", diff)
			}
		})
	}
}

// TestMarshalIsUpstreamBytes checks that our writer produces exactly the
// bytes upstream's flanneld writes for the same node, so upstream's CNI
// plugin (and anything else that reads upstream's file) reads ours.
func TestMarshalIsUpstreamBytes(t *testing.T) {
	tests := []struct {
		name string
		env  Env
		want string
	}{
		{"ipv4", envUpstreamV4, upstreamV4},
		{"ipv4-no-masquerade", Env{Networks: pfx("10.244.0.0/16"), Subnet: GatewayOf(netip.MustParsePrefix("10.244.1.0/24")),
			MTU: 1500}, upstreamV4NoMasq},
		{"dual-stack", envUpstreamDual, upstreamDual},
		{"ipv6-only", envUpstreamV6Only, upstreamV6Only},
		{"several-networks", envUpstreamMulti, upstreamMultiNetwork},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, string(tt.env.Marshal())); diff != "" {
				t.Errorf("Marshal (-upstream +ours):\n%s", diff)
			}
		})
	}
}

func TestParseNetworkListErrors(t *testing.T) {
	for _, in := range []string{
		"FLANNEL_NETWORK=10.42.0.0/16,\n",
		"FLANNEL_NETWORK=10.42.0.0/16,,10.43.0.0/16\n",
		"FLANNEL_NETWORK=10.42.0.0/16,fd00::/56\n",
		"FLANNEL_IPV6_NETWORK=fd00::/56,banana\n",
	} {
		_, err := Parse([]byte(in))
		if err == nil {
			t.Errorf("Parse(%q): want an error", in)
		}
	}
}
