package hostgw

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

func TestPlanAndCheck(t *testing.T) {
	n, err := config.ParseNetwork([]byte(`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}`))
	if err != nil {
		t.Fatal(err)
	}
	u := backend.Underlay{Name: "eth0", MTU: 1500, Prefixes: []netip.Prefix{
		netip.MustParsePrefix("192.168.1.10/24"), netip.MustParsePrefix("fd00:1::10/64")}}
	b := New(n, u)
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), IPv6Subnet: netip.MustParsePrefix("fc00:0:0:1::/64")}
	p := lease.Lease{
		Subnet: netip.MustParsePrefix("10.5.2.0/24"), IPv6Subnet: netip.MustParsePrefix("fc00:0:0:2::/64"),
		Attrs: lease.Attrs{BackendType: "host-gw", PublicIP: netip.MustParseAddr("192.168.1.11"), PublicIPv6: netip.MustParseAddr("fd00:1::11")},
	}
	if _, err := b.Peer(self, p); err != nil {
		t.Fatal(err)
	}
	far := p
	far.Subnet, far.IPv6Subnet = netip.MustParsePrefix("10.5.3.0/24"), netip.Prefix{}
	far.Attrs.PublicIP = netip.MustParseAddr("172.16.0.1")
	if _, err := b.Peer(self, far); backend.SkipReason(err) != backend.ReasonNotOnLink {
		t.Errorf("off-link peer: %v", err)
	}
	vx := p
	vx.Attrs.BackendType = "vxlan"
	if _, err := b.Peer(self, vx); backend.SkipReason(err) != backend.ReasonBackendType {
		t.Errorf("vxlan peer: %v", err)
	}
	want := []string{
		"route 10.5.2.0/24 via 192.168.1.11 dev eth0",
		"route fc00:0:0:2::/64 via fd00:1::11 dev eth0",
	}
	if diff := cmp.Diff(want, backend.Compose(b, self, []lease.Lease{p}).Lines()); diff != "" {
		t.Errorf("(-want +got)\n%s", diff)
	}
	if b.MTU() != 1500 {
		t.Errorf("MTU = %d", b.MTU())
	}
}
