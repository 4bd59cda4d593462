package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lease"
)

// peerWriter writes fake vxlan peers into etcd and remembers what it left
// there. Every value it writes has a MAC of its own (an FDB entry is
// keyed by MAC), from gen.
type peerWriter struct {
	cli   *clientv3.Client
	dual  bool                  // leases with an IPv6 subnet too
	avoid map[netip.Prefix]bool // the hosts' own subnets
	next  int                   // next fresh subnet
	gen   uint32
	live  map[netip.Prefix]vxlanPeer
	keys  []netip.Prefix // live, in no order
	gone  []netip.Prefix // deleted, for adding again
	ops   int
}

func newPeerWriter(c *cluster, dual bool) *peerWriter {
	w := &peerWriter{cli: c.etcd, dual: dual, avoid: map[netip.Prefix]bool{}, live: map[netip.Prefix]vxlanPeer{}}
	for i, s := range c.subnets {
		w.avoid[s] = true
		w.avoid[c.subnets6[i]] = true
	}
	return w
}

// fresh returns an IPv4 subnet never written: 10.100.0.0/24 onwards.
func (w *peerWriter) fresh() netip.Prefix {
	for {
		n := w.next
		w.next++
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + n/256), byte(n % 256), 0}), 24)
		if !w.avoid[p] && !w.avoid[subnet6Of(p)] {
			return p
		}
	}
}

// subnet6Of is the IPv6 subnet a dual-stack fake peer with IPv4 subnet p
// has: fc00:96:0:N::/64, N numbering p from 10.100.0.0/24.
func subnet6Of(p netip.Prefix) netip.Prefix {
	b := p.Addr().As4()
	n := (int(b[1])-100)*256 + int(b[2])
	return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfc, 0x00, 0x00, 0x96, 0, 0, byte(n >> 8), byte(n)}), 64)
}

// peer returns a new identity: MACs and public addresses (198.18.97.0/24
// and fd00:cb97::/64, which no lab host holds).
func (w *peerWriter) peer() vxlanPeer {
	w.gen++
	g := w.gen
	mac := func(b byte) string {
		return fmt.Sprintf("02:%02x:%02x:%02x:%02x:%02x", b, byte(g>>24), byte(g>>16), byte(g>>8), byte(g))
	}
	v := vxlanPeer{publicIP: netip.AddrFrom4([4]byte{198, 18, 97, byte(g%250 + 1)}), mac: mac(0xcb)}
	if w.dual {
		v.publicIP6 = netip.AddrFrom16([16]byte{0xfd, 0x00, 0xcb, 0x97, 14: byte(g >> 8), 15: byte(g)})
		v.mac6 = mac(0xcc)
	}
	return v
}

func vxlanValue(v vxlanPeer) string {
	v6, data6 := "null", ""
	if v.subnet6.IsValid() {
		v6 = `"` + v.publicIP6.String() + `"`
		data6 = `,"BackendV6Data":{"VNI":1,"VtepMAC":"` + v.mac6 + `"}`
	}
	return `{"PublicIP":"` + v.publicIP.String() + `","PublicIPv6":` + v6 + `,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"` + v.mac + `"}` + data6 + `}`
}

// key is p's lease key, with its IPv6 subnet in a dual-stack run.
func (w *peerWriter) key(p netip.Prefix) string {
	var p6 netip.Prefix
	if w.dual {
		p6 = subnet6Of(p)
	}
	return subnetsPrefix + lease.MakeKey(p, p6)
}

func (w *peerWriter) put(ctx context.Context, p netip.Prefix, v vxlanPeer) error {
	if w.dual {
		v.subnet6 = subnet6Of(p)
	}
	if _, err := w.cli.Put(ctx, w.key(p), vxlanValue(v)); err != nil {
		return err
	}
	w.ops++
	if _, ok := w.live[p]; !ok {
		w.keys = append(w.keys, p)
	}
	w.live[p] = v
	return nil
}

func (w *peerWriter) del(ctx context.Context, p netip.Prefix) error {
	if _, err := w.cli.Delete(ctx, w.key(p)); err != nil {
		return err
	}
	w.ops++
	delete(w.live, p)
	for i, k := range w.keys {
		if k == p {
			w.keys[i] = w.keys[len(w.keys)-1]
			w.keys = w.keys[:len(w.keys)-1]
			break
		}
	}
	w.gone = append(w.gone, p)
	return nil
}

// seed writes n peers in transactions of 100.
func (w *peerWriter) seed(t *testing.T, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var ops []clientv3.Op
	for i := 0; i < n; i++ {
		p, v := w.fresh(), w.peer()
		if w.dual {
			v.subnet6 = subnet6Of(p)
		}
		ops = append(ops, clientv3.OpPut(w.key(p), vxlanValue(v)))
		w.live[p] = v
		w.keys = append(w.keys, p)
		if len(ops) == 100 || i == n-1 {
			if _, err := w.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = ops[:0]
		}
	}
}
