package alloc

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

func newAlloc(t *testing.T, netconf string) *Backend {
	t.Helper()
	n, err := config.ParseNetwork([]byte(netconf))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Factory(backend.Env{Network: n, Underlay: backend.Underlay{
		Name: "eth0", MTU: 1460,
		PublicIP: netip.MustParseAddr("192.168.1.10"), PublicIPv6: netip.MustParseAddr("fd00::10"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	return b.(*Backend)
}

// TestLeaseGolden: our lease value is upstream alloc's, byte for byte
// (PublicIP only: no BackendType, no data), and upstream's decodes to
// the attributes we publish, so a host switching keeps its lease.
func TestLeaseGolden(t *testing.T) {
	b := newAlloc(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}`)
	const upstream = `{"PublicIP":"192.168.1.10","PublicIPv6":null}`
	got, err := json.Marshal(b.Attrs())
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != upstream {
		t.Errorf("ours = %s\nwant   %s", got, upstream)
	}
	l, err := lease.Decode("10.5.1.0-24", []byte(upstream))
	if err != nil {
		t.Fatal(err)
	}
	if !l.Attrs.Equal(b.Attrs()) || !l.Attrs.Equal(b.Resume(l)) {
		t.Errorf("upstream's lease decodes to %+v, we publish %+v", l.Attrs, b.Attrs())
	}
	if b.Type() != "alloc" || b.MTU() != 1460 {
		t.Errorf("Type = %q, MTU = %d", b.Type(), b.MTU())
	}
	d := newAlloc(t, `{"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fc00::/48","Backend":{"Type":"alloc"}}`)
	if a := d.Attrs(); a.PublicIPv6 != netip.MustParseAddr("fd00::10") || a.BackendType != "" {
		t.Errorf("dual-stack attrs = %+v", a)
	}
}

// TestPeersPlanNothing: any well-formed peer is accepted, whatever its
// backend type, and plans no kernel object; the common checks still
// apply.
func TestPeersPlanNothing(t *testing.T) {
	b := newAlloc(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}`)
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: b.Attrs()}
	for _, typ := range []string{"", "vxlan", "alloc"} {
		p := lease.Lease{Subnet: netip.MustParsePrefix("10.5.2.0/24"),
			Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.1.11"), BackendType: typ}}
		o, err := b.Peer(self, p)
		if err != nil || o.Len() != 0 {
			t.Errorf("type %q: %d objects, %v", typ, o.Len(), err)
		}
	}
	out := lease.Lease{Subnet: netip.MustParsePrefix("10.6.2.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.1.12")}}
	if _, err := b.Peer(self, out); backend.SkipReason(err) != backend.ReasonOutside {
		t.Errorf("outside the network: %v", err)
	}
	if s := b.PlanBase(self); s.String() != "" {
		t.Errorf("base plan:\n%s", s)
	}
}
