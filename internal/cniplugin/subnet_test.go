package cniplugin

import (
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestAddReadsUpstreamSubnetFiles runs ADD over subnet.env files in each
// form upstream's flanneld writes (written here by hand, byte for byte,
// from its writer) and checks the delegate configuration against what
// upstream's plugin builds from the same file: one host-local range per
// family, a route to every cluster network listed (IPv4 first), MTU and
// the inverse of FLANNEL_IPMASQ.
func TestAddReadsUpstreamSubnetFiles(t *testing.T) {
	tests := []struct {
		name, file string
		ranges     []any
		routes     []any
		mtu        float64
		ipMasq     bool
	}{
		{"ipv4",
			"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
			[]any{rng("10.244.1.0/24")}, []any{dst("10.244.0.0/16")}, 1450, false},
		{"ipv4-no-masquerade",
			"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n",
			[]any{rng("10.244.1.0/24")}, []any{dst("10.244.0.0/16")}, 1500, true},
		{"dual-stack",
			"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n" +
				"FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42:1::1/64\n" +
				"FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
			[]any{rng("10.244.1.0/24"), rng("2001:cafe:42:1::/64")},
			[]any{dst("10.244.0.0/16"), dst("2001:cafe:42::/56")}, 1450, false},
		{"ipv6-only",
			"FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n",
			[]any{rng("2001:cafe:42:1::/64")}, []any{dst("2001:cafe:42::/56")}, 1430, false},
		{"several-networks",
			"FLANNEL_NETWORK=10.42.0.0/16,10.43.0.0/16\nFLANNEL_SUBNET=10.42.3.1/24\n" +
				"FLANNEL_IPV6_NETWORK=fd00:42::/56,fd00:43::/56\nFLANNEL_IPV6_SUBNET=fd00:42:0:3::1/64\n" +
				"FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
			[]any{rng("10.42.3.0/24"), rng("fd00:42:0:3::/64")},
			[]any{dst("10.42.0.0/16"), dst("10.43.0.0/16"), dst("fd00:42::/56"), dst("fd00:43::/56")}, 1450, false},
		{"repeated-network",
			"FLANNEL_NETWORK=10.42.0.0/16,10.42.0.0/16\nFLANNEL_SUBNET=10.42.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
			[]any{rng("10.42.3.0/24")}, []any{dst("10.42.0.0/16")}, 1450, false},
		{"no-trailing-newline",
			"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false",
			[]any{rng("10.244.1.0/24")}, []any{dst("10.244.0.0/16")}, 1450, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := newFixture(t)
			if err := os.WriteFile(fx.subnetFile, []byte(tt.file), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := fx.plugin.Add(fx.args("1.0.0", "")); err != nil {
				t.Fatal(err)
			}
			conf := fx.exec.calls[0].Conf
			ipam, _ := conf["ipam"].(map[string]any)
			if diff := cmp.Diff(tt.ranges, ipam["ranges"]); diff != "" {
				t.Errorf("ipam.ranges (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.routes, ipam["routes"]); diff != "" {
				t.Errorf("ipam.routes (-want +got):\n%s", diff)
			}
			if conf["mtu"] != tt.mtu || conf["ipMasq"] != tt.ipMasq {
				t.Errorf("mtu %v ipMasq %v, want %v %v", conf["mtu"], conf["ipMasq"], tt.mtu, tt.ipMasq)
			}
		})
	}
}

// rng is a host-local range set holding one subnet, as the delegate's
// JSON has it.
func rng(subnet string) any { return []any{map[string]any{"subnet": subnet}} }

// dst is a route as the delegate's JSON has it.
func dst(prefix string) any { return map[string]any{"dst": prefix} }
