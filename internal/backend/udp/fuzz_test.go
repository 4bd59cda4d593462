package udp

import (
	"net/netip"
	"testing"

	"github.com/weft-net/weft/internal/lease"
)

// FuzzPeer: any lease value a store may hold either is skipped with a
// reason or plans exactly one forwarding entry: the peer's subnet, inside
// the network, to an IPv4 public address at our port.
func FuzzPeer(f *testing.F) {
	f.Add("10.5.2.0-24", []byte(`{"PublicIP":"192.168.1.11","PublicIPv6":null}`))
	f.Add("10.5.3.0-24", []byte(`{"PublicIP":"192.168.1.12","BackendType":"vxlan","BackendData":{"VNI":1}}`))
	f.Add("10.5.4.0-24&fc00::-64", []byte(`{"PublicIP":"192.168.1.13","PublicIPv6":"fc00::1"}`))
	f.Add("10.5.5.0-24", []byte(`{"PublicIP":"0.0.0.0"}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		b := newBackend(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":8300}}`)
		p, err := lease.Decode(key, value)
		if err != nil {
			return
		}
		o, err := b.Peer(self(), p)
		if err != nil {
			return
		}
		if len(o.UDPPeers) != 1 || len(o.Routes)+len(o.Neighs)+len(o.FDB)+len(o.WGPeers) != 0 {
			t.Fatalf("lease %s %q: planned %+v, want one udp peer", key, value, o)
		}
		u := o.UDPPeers[0]
		if u.Dev != Device || u.Subnet != p.Subnet || !netip.MustParsePrefix("10.5.0.0/16").Contains(u.Subnet.Addr()) ||
			!u.Endpoint.Addr().Is4() || u.Endpoint.Addr().IsUnspecified() || u.Endpoint.Port() != 8300 {
			t.Fatalf("lease %s %q: planned %+v", key, value, u)
		}
	})
}
