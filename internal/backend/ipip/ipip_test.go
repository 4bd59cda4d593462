package ipip

import (
	"encoding/json"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

var underlay = backend.Underlay{Name: "eth0", MTU: 1500,
	Prefixes: []netip.Prefix{netip.MustParsePrefix("192.168.1.10/24")},
	LocalIP:  netip.MustParseAddr("192.168.1.10"), PublicIP: netip.MustParseAddr("192.168.1.10")}

func factory(t *testing.T, netconf string) (*Backend, error) {
	t.Helper()
	n, err := config.ParseNetwork([]byte(netconf))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Factory(backend.Env{Network: n, Underlay: underlay})
	if err != nil {
		return nil, err
	}
	return b.(*Backend), nil
}

func peer(subnet, ip string) lease.Lease {
	return lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{BackendType: "ipip", PublicIP: netip.MustParseAddr(ip)}}
}

// TestLeaseGolden: our lease value is upstream's ipip lease, and upstream's
// decodes to what we publish.
func TestLeaseGolden(t *testing.T) {
	b, err := factory(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"}}`)
	if err != nil {
		t.Fatal(err)
	}
	const upstream = `{"PublicIP":"192.168.1.10","PublicIPv6":null,"BackendType":"ipip"}`
	if got, _ := json.Marshal(b.Attrs()); string(got) != upstream {
		t.Errorf("ours %s\nwant %s", got, upstream)
	}
	l, err := lease.Decode("10.5.1.0-24", []byte(upstream))
	if err != nil || !l.Attrs.Equal(b.Resume(l)) {
		t.Errorf("upstream's %+v (%v), ours %+v", l.Attrs, err, b.Attrs())
	}
}

func TestPlan(t *testing.T) {
	b, err := factory(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"ipip","DirectRouting":true}}`)
	if err != nil {
		t.Fatal(err)
	}
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: b.Attrs()}
	want := []string{
		"link flannel.ipip ipip local 192.168.1.10 mtu 1480 addr 10.5.1.0/32",
		"route 10.5.2.0/24 via 192.168.1.11 dev eth0",
		"route 10.5.3.0/24 via 172.16.0.3 dev flannel.ipip onlink",
	}
	got := backend.Compose(b, self, []lease.Lease{peer("10.5.2.0/24", "192.168.1.11"), peer("10.5.3.0/24", "172.16.0.3")}).Lines()
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got)\n%s", d)
	}
	if b.MTU() != 1480 {
		t.Errorf("MTU %d", b.MTU())
	}
	noDR, _ := factory(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"}}`)
	o, err := noDR.Peer(self, peer("10.5.2.0/24", "192.168.1.11"))
	if err != nil || len(o.Routes) != 1 || o.Routes[0].Dev != DeviceName || !o.Routes[0].OnLink {
		t.Errorf("without DirectRouting: %+v, %v", o, err)
	}
	vx := peer("10.5.4.0/24", "192.168.1.12")
	vx.Attrs.BackendType = "vxlan"
	if _, err := b.Peer(self, vx); backend.SkipReason(err) != backend.ReasonBackendType {
		t.Errorf("vxlan peer: %v", err)
	}
}

func TestFactoryErrors(t *testing.T) {
	for conf, want := range map[string]string{
		`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"ipip"}}`: "EnableIPv6: the ipip backend carries IPv4 only (as upstream's); use vxlan, host-gw or wireguard for IPv6",
	} {
		_, err := factory(t, conf)
		if fe := (*config.FieldError)(nil); !errors.As(err, &fe) || err.Error() != want {
			t.Errorf("%s:\n got %v\nwant %s", conf, err, want)
		}
	}
}
