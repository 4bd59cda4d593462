package backends

import (
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

// noKernel is a backend.Kernel with no devices.
type noKernel struct{}

func (noKernel) LinkByName(string) (dataplane.Link, bool, error) { return dataplane.Link{}, false, nil }

// fuzzBackends builds every backend for one dual-stack host (public
// addresses 192.168.0.1 and fd00::1, subnets 10.5.1.0/24 and
// fc00:0:0:1::/64) and returns each with this host's lease.
func fuzzBackends(f *testing.F) []struct {
	b    backend.Backend
	self lease.Lease
} {
	u := backend.Underlay{Index: 2, Name: "eth0", MTU: 1500,
		Prefixes: []netip.Prefix{netip.MustParsePrefix("192.168.0.1/24"), netip.MustParsePrefix("fd00::1/64")},
		LocalIP:  netip.MustParseAddr("192.168.0.1"), LocalIPv6: netip.MustParseAddr("fd00::1"),
		PublicIP: netip.MustParseAddr("192.168.0.1"), PublicIPv6: netip.MustParseAddr("fd00::1")}
	var out []struct {
		b    backend.Backend
		self lease.Lease
	}
	for _, nc := range []string{
		`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan","DirectRouting":true}}`,
		`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}`,
		`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"wireguard"}}`,
		`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"wireguard","Mode":"auto"}}`,
	} {
		n, err := config.ParseNetwork([]byte(nc))
		if err != nil {
			f.Fatal(err)
		}
		b, err := All()[n.Backend.Type].New(backend.Env{Network: n, Underlay: u, Kernel: noKernel{},
			Options: config.Options{WireGuardKeyFile: filepath.Join(f.TempDir(), "key")}})
		if err != nil {
			f.Fatal(err)
		}
		self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), IPv6Subnet: netip.MustParsePrefix("fc00:0:0:1::/64"), Attrs: b.Attrs()}
		out = append(out, struct {
			b    backend.Backend
			self lease.Lease
		}{b, self})
	}
	return out
}

// FuzzPeer feeds arbitrary store keys and values through the path every
// peer lease takes (lease.Decode, then each backend's Peer) and checks
// what a backend accepts: the peer's subnets lie in the network and clear
// of ours, nothing it plans leads to our own public address, its routes
// and WireGuard allowed IPs are the peer's subnets, and planning is
// deterministic. What it refuses, it refuses with a SkipError.
func FuzzPeer(f *testing.F) {
	bs := fuzzBackends(f)
	const mac = `"VtepMAC":"0e:00:00:00:00:02"`
	const key = `"PublicKey":"YZMNJ4+0E1bKGTFVzDiXv5p3YmHNP/C0IS8YFMZwRG4="`
	for _, s := range []struct{ key, value string }{
		{"10.5.2.0-24", `{"PublicIP":"192.168.0.2","BackendType":"vxlan","BackendData":{"VNI":1,` + mac + `}}`},
		{"10.5.2.0-24&fc00:0:0:2::-64", `{"PublicIP":"192.168.0.2","PublicIPv6":"fd00::2","BackendType":"vxlan","BackendData":{"VNI":1,` + mac + `},"BackendV6Data":{"VNI":1,` + mac + `}}`},
		{"10.5.2.0-24", `{"PublicIP":"192.168.0.1","BackendType":"vxlan","BackendData":{"VNI":1,` + mac + `}}`},
		{"10.5.2.0-24", `{"PublicIP":"192.168.0.2","BackendType":"host-gw"}`},
		{"0.0.0.0-0&fc00:0:0:2::-64", `{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::2","BackendType":"host-gw"}`},
		{"10.5.2.0-24", `{"PublicIP":"203.0.113.2","BackendType":"wireguard","BackendData":{` + key + `,"Port":51820}}`},
		{"10.5.0.0-16", `{"PublicIP":"192.168.0.2","BackendType":"host-gw"}`},
		{"10.5.1.128-25", `{"PublicIP":"192.168.0.2","BackendType":"host-gw"}`},
	} {
		f.Add(uint8(0), s.key, []byte(s.value))
		f.Add(uint8(1), s.key, []byte(s.value))
		f.Add(uint8(2), s.key, []byte(s.value))
	}
	f.Fuzz(func(t *testing.T, which uint8, key string, value []byte) {
		be := bs[int(which)%len(bs)]
		peer, err := lease.Decode(key, value)
		if err != nil {
			return
		}
		objs, err := be.b.Peer(be.self, peer)
		if err != nil {
			if se := (*backend.SkipError)(nil); !errors.As(err, &se) {
				t.Fatalf("%s: Peer(%s %s) = %v, not a SkipError", be.b.Type(), key, value, err)
			}
			return
		}
		n := config.Network{} // the networks of fuzzBackends
		n.Network, n.IPv6Network = netip.MustParsePrefix("10.5.0.0/16"), netip.MustParsePrefix("fc00::/48")
		subnets := []netip.Prefix{}
		for _, p := range []struct{ sub, net, own netip.Prefix }{
			{peer.Subnet, n.Network, be.self.Subnet}, {peer.IPv6Subnet, n.IPv6Network, be.self.IPv6Subnet},
		} {
			if !p.sub.IsValid() {
				continue
			}
			subnets = append(subnets, p.sub)
			if !p.net.Contains(p.sub.Addr()) || p.sub.Bits() < p.net.Bits() || p.sub.Overlaps(p.own) {
				t.Fatalf("%s: accepted %s, outside %s or overlapping %s", be.b.Type(), p.sub, p.net, p.own)
			}
		}
		ours := func(a netip.Addr) bool {
			return a.IsValid() && (a == be.self.Attrs.PublicIP || a == be.self.Attrs.PublicIPv6)
		}
		for _, r := range objs.Routes {
			if ours(r.Gw) || !slices.Contains(subnets, r.Dst) {
				t.Fatalf("%s: lease %s %s planned route %s", be.b.Type(), key, value, r)
			}
		}
		for _, fdb := range objs.FDB {
			if ours(fdb.Dst) {
				t.Fatalf("%s: lease %s %s planned an FDB entry to ourselves: %+v", be.b.Type(), key, value, fdb)
			}
		}
		for _, p := range objs.WGPeers {
			if ours(p.Endpoint.Addr()) {
				t.Fatalf("%s: lease %s %s planned a WireGuard peer at our address: %+v", be.b.Type(), key, value, p)
			}
			for _, a := range p.AllowedIPs {
				if a.IsValid() && !slices.Contains(subnets, a) {
					t.Fatalf("%s: lease %s %s allows %s", be.b.Type(), key, value, a)
				}
			}
		}
		again, err := be.b.Peer(be.self, peer)
		if err != nil || !again.Equal(objs) {
			t.Fatalf("%s: Peer is not deterministic: %v, %+v vs %+v", be.b.Type(), err, again, objs)
		}
	})
}
