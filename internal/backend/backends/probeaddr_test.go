package backends

import (
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

// TestProbeAddr checks, for every backend and family setup, that the
// address the prober sends to for a peer is one that peer answers for
// without pods: the peer's own daemon, whose plan is this same backend's
// PlanBase for its lease, puts it on one of its devices (vxlan, ipip,
// wireguard); or, for host-gw, which puts none, it is the gateway of the
// route our plan installs for the peer (its public address). extension
// and alloc are not probed.
func TestProbeAddr(t *testing.T) {
	for _, tc := range []struct {
		name, config string
		want         string // "" for none
	}{
		{"vxlan", `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`, "10.5.2.0"},
		{"vxlan direct", `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}`, "10.5.2.0"},
		{"vxlan dual", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}`, "10.5.2.0"},
		{"vxlan v6", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}`, "fc00:0:0:2::"},
		{"ipip", `{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"}}`, "10.5.2.0"},
		{"wireguard", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"wireguard"}}`, "10.5.2.0"},
		{"wireguard auto v6", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"wireguard","Mode":"auto"}}`, "fc00:0:0:2::"},
		{"host-gw", `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}`, "192.168.0.2"},
		{"host-gw v6", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}`, "fd00::2"},
		{"extension", `{"Network":"10.5.0.0/16","Backend":{"Type":"extension"}}`, ""},
		{"alloc", `{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := config.ParseNetwork([]byte(tc.config))
			if err != nil {
				t.Fatal(err)
			}
			host := func(i byte) (backend.Backend, lease.Lease) {
				u := backend.Underlay{Index: 2, Name: "eth0", MTU: 1500,
					Prefixes:  []netip.Prefix{netip.MustParsePrefix("192.168.0.1/24"), netip.MustParsePrefix("fd00::1/64")},
					LocalIP:   netip.AddrFrom4([4]byte{192, 168, 0, i}),
					LocalIPv6: netip.AddrFrom16([16]byte{0: 0xfd, 15: i}),
				}
				u.PublicIP, u.PublicIPv6 = u.LocalIP, u.LocalIPv6
				b, err := All()[n.Backend.Type].New(backend.Env{Network: n, Underlay: u, Kernel: noKernel{},
					Options: config.Options{WireGuardKeyFile: filepath.Join(t.TempDir(), "key")}})
				if err != nil {
					t.Fatal(err)
				}
				l := lease.Lease{Attrs: b.Attrs()}
				if n.EnableIPv4 {
					l.Subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, i, 0}), 24)
				}
				if n.EnableIPv6 {
					l.IPv6Subnet = netip.PrefixFrom(netip.AddrFrom16([16]byte{0: 0xfc, 7: i}), 64)
				}
				return b, l
			}
			us, self := host(1)
			them, peer := host(2)
			got := us.ProbeAddr(peer)
			if tc.want == "" {
				if got.IsValid() {
					t.Fatalf("ProbeAddr = %s, want none", got)
				}
				return
			}
			if want := netip.MustParseAddr(tc.want); got != want {
				t.Fatalf("ProbeAddr = %s, want %s", got, want)
			}
			// Where it answers: on the peer's own devices…
			for _, l := range them.PlanBase(peer).Links {
				if l.Addr.Addr() == got || l.Addr2.Addr() == got {
					return
				}
			}
			// …or, host-gw, as the gateway our route to it names.
			objs, err := us.Peer(self, peer)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range objs.Routes {
				if r.Gw == got {
					return
				}
			}
			t.Fatalf("%s is neither on the peer's devices %v nor a gateway of our routes %v", got, them.PlanBase(peer).Links, objs.Routes)
		})
	}
}
