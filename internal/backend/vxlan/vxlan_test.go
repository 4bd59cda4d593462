package vxlan

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

var (
	mac1 = dataplane.MAC{0x0a, 0, 0, 0, 0, 1}
	mac2 = dataplane.MAC{0x0a, 0, 0, 0, 0, 2}
	mac3 = dataplane.MAC{0x0a, 0, 0, 0, 0, 3}
	mac6 = dataplane.MAC{0x0a, 0, 0, 0, 6, 6}
)

func network(t *testing.T, js string) *config.Network {
	t.Helper()
	n, err := config.ParseNetwork([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

var underlay = backend.Underlay{
	Index: 7, Name: "eth0", MTU: 1500,
	Prefixes: []netip.Prefix{netip.MustParsePrefix("192.168.1.10/24"), netip.MustParsePrefix("fd00:1::10/64")},
	LocalIP:  netip.MustParseAddr("192.168.1.10"), PublicIP: netip.MustParseAddr("192.168.1.10"),
	LocalIPv6: netip.MustParseAddr("fd00:1::10"), PublicIPv6: netip.MustParseAddr("fd00:1::10"),
}

func peer(v4, v6, pub4, pub6 string, m4, m6 dataplane.MAC) lease.Lease {
	l := lease.Lease{Attrs: lease.Attrs{BackendType: "vxlan"}}
	if v4 != "" {
		l.Subnet = netip.MustParsePrefix(v4)
		l.Attrs.PublicIP = netip.MustParseAddr(pub4)
		l.Attrs.BackendData = EncodeData(1, m4)
	}
	if v6 != "" {
		l.IPv6Subnet = netip.MustParsePrefix(v6)
		l.Attrs.PublicIPv6 = netip.MustParseAddr(pub6)
		l.Attrs.BackendV6Data = EncodeData(1, m6)
	}
	return l
}

func TestPlan(t *testing.T) {
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), IPv6Subnet: netip.MustParsePrefix("fc00:0:0:1::/64")}
	tests := []struct {
		name  string
		net   string
		peers []lease.Lease
		want  []string
	}{
		{
			name: "v4 two peers",
			net:  `{"Network":"10.5.0.0/16"}`,
			peers: []lease.Lease{
				peer("10.5.2.0/24", "", "192.168.1.11", "", mac2, mac6),
				peer("10.5.3.0/24", "", "172.16.0.3", "", mac3, mac6),
			},
			want: []string{
				"fdb 0a:00:00:00:00:02 dst 192.168.1.11 dev flannel.1 self permanent",
				"fdb 0a:00:00:00:00:03 dst 172.16.0.3 dev flannel.1 self permanent",
				"link flannel.1 vxlan id 1 dstport 0 local 192.168.1.10 dev#7 mtu 1450 mac 0a:00:00:00:00:01 addr 10.5.1.0/32",
				"neigh 10.5.2.0 lladdr 0a:00:00:00:00:02 dev flannel.1 permanent",
				"neigh 10.5.3.0 lladdr 0a:00:00:00:00:03 dev flannel.1 permanent",
				"route 10.5.2.0/24 via 10.5.2.0 dev flannel.1 onlink",
				"route 10.5.3.0/24 via 10.5.3.0 dev flannel.1 onlink",
			},
		},
		{
			name: "direct routing only for the on-link peer, options honoured",
			net:  `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":4,"Port":4789,"GBP":true,"DirectRouting":true,"MTU":1400}}`,
			peers: []lease.Lease{
				peer("10.5.2.0/24", "", "192.168.1.11", "", mac2, mac6),
				peer("10.5.3.0/24", "", "172.16.0.3", "", mac3, mac6),
			},
			want: []string{
				"fdb 0a:00:00:00:00:03 dst 172.16.0.3 dev flannel.4 self permanent",
				"link flannel.4 vxlan id 4 dstport 4789 local 192.168.1.10 dev#7 mtu 1350 mac 0a:00:00:00:00:01 gbp addr 10.5.1.0/32",
				"neigh 10.5.3.0 lladdr 0a:00:00:00:00:03 dev flannel.4 permanent",
				"route 10.5.2.0/24 via 192.168.1.11 dev eth0",
				"route 10.5.3.0/24 via 10.5.3.0 dev flannel.4 onlink",
			},
		},
		{
			name: "dual stack: v6 device with 70 bytes of overhead",
			net:  `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}`,
			peers: []lease.Lease{
				peer("10.5.2.0/24", "fc00:0:0:2::/64", "192.168.1.11", "fd00:1::11", mac2, mac3),
			},
			want: []string{
				"fdb 0a:00:00:00:00:02 dst 192.168.1.11 dev flannel.1 self permanent",
				"fdb 0a:00:00:00:00:03 dst fd00:1::11 dev flannel-v6.1 self permanent",
				"link flannel-v6.1 vxlan id 1 dstport 0 local fd00:1::10 dev#7 mtu 1430 mac 0a:00:00:00:06:06 addr fc00:0:0:1::/128",
				"link flannel.1 vxlan id 1 dstport 0 local 192.168.1.10 dev#7 mtu 1450 mac 0a:00:00:00:00:01 addr 10.5.1.0/32",
				"neigh 10.5.2.0 lladdr 0a:00:00:00:00:02 dev flannel.1 permanent",
				"neigh fc00:0:0:2:: lladdr 0a:00:00:00:00:03 dev flannel-v6.1 permanent",
				"route 10.5.2.0/24 via 10.5.2.0 dev flannel.1 onlink",
				"route fc00:0:0:2::/64 via fc00:0:0:2:: dev flannel-v6.1 onlink",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := network(t, tt.net)
			b := New(n, underlay, mac1, mac6)
			s := self
			if !n.EnableIPv6 {
				s.IPv6Subnet = netip.Prefix{}
			}
			for _, p := range tt.peers {
				if _, err := b.Peer(s, p); err != nil {
					t.Fatalf("Peer(%s): %v", p.Key(), err)
				}
			}
			got := backend.Compose(b, s, tt.peers).Lines()
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
			// Planning is deterministic: the same input gives the same state.
			if again := backend.Compose(b, s, tt.peers).Lines(); !cmp.Equal(got, again) {
				t.Error("Plan is not deterministic")
			}
		})
	}
}

// TestMTU pins upstream's meaning of Backend.MTU: the underlay MTU the
// overlay is carved from, not the device MTU. The device gets it less the
// outer headers (50 bytes over IPv4; 70 over IPv6, where upstream says 50),
// and FLANNEL_MTU is the smallest device MTU in use.
func TestMTU(t *testing.T) {
	const dual = `"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"`
	const v6only = `"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"`
	for _, tc := range []struct {
		net             string
		dev4, dev6, pod int // device MTUs (0: no device) and FLANNEL_MTU
	}{
		{`{"Network":"10.5.0.0/16"}`, 1450, 0, 1450},
		{`{` + dual + `}`, 1450, 1430, 1430},
		{`{` + v6only + `}`, 0, 1430, 1430},
		// The kube-flannel Helm chart's mtu: 1500 on a 1500-byte underlay.
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":1500}}`, 1450, 0, 1450},
		{`{"Network":"10.5.0.0/16","Backend":{"MTU":1300}}`, 1250, 0, 1250},
		{`{` + dual + `,"Backend":{"MTU":1400}}`, 1350, 1330, 1330},
		{`{` + v6only + `,"Backend":{"MTU":1400}}`, 0, 1330, 1330},
		// 0 is unset: the underlay's MTU (upstream would subtract 50 from 0).
		{`{"Network":"10.5.0.0/16","Backend":{"MTU":0}}`, 1450, 0, 1450},
	} {
		b := New(network(t, tc.net), underlay, mac1, mac6)
		if got := b.MTU(); got != tc.pod {
			t.Errorf("%s: MTU = %d, want %d", tc.net, got, tc.pod)
		}
		base := b.PlanBase(lease.Lease{})
		if got := base.Links["flannel.1"].MTU; got != tc.dev4 {
			t.Errorf("%s: flannel.1 mtu %d, want %d", tc.net, got, tc.dev4)
		}
		if got := base.Links["flannel-v6.1"].MTU; got != tc.dev6 {
			t.Errorf("%s: flannel-v6.1 mtu %d, want %d", tc.net, got, tc.dev6)
		}
		if err := b.CheckUnderlay(); err != nil {
			t.Errorf("%s: CheckUnderlay = %v", tc.net, err)
		}
	}
}

// TestCheckUnderlay: a device MTU the kernel would refuse (above the
// underlay's MTU less the outer headers), or one too small for its
// family, is a one-line error naming Backend.MTU or the interface.
func TestCheckUnderlay(t *testing.T) {
	small := underlay
	small.MTU = 1300
	for _, tc := range []struct {
		net  string
		u    backend.Underlay
		want string
	}{
		{`{"Network":"10.5.0.0/16","Backend":{"MTU":1600}}`, underlay,
			"Backend.MTU: 1600 leaves 1550 for flannel.1, above the 1450 the kernel allows over eth0 (MTU 1500)"},
		{`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"MTU":1501}}`, underlay,
			"Backend.MTU: 1501 leaves 1431 for flannel-v6.1, above the 1430 the kernel allows over eth0 (MTU 1500)"},
		{`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}`, small,
			"interface eth0: MTU 1300 leaves 1230 for flannel-v6.1, below IPv6's minimum 1280; set a larger MTU on eth0"},
	} {
		err := New(network(t, tc.net), tc.u, mac1, mac6).CheckUnderlay()
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s over MTU %d:\n got %v\nwant %s", tc.net, tc.u.MTU, err, tc.want)
		}
	}
}

func TestCheckPeerRejects(t *testing.T) {
	n := network(t, `{"Network":"10.5.0.0/16"}`)
	b := New(n, underlay, mac1, mac6)
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24")}
	good := peer("10.5.2.0/24", "", "192.168.1.11", "", mac2, mac6)
	mod := func(f func(*lease.Lease)) lease.Lease { l := good; f(&l); return l }
	for _, tc := range []struct {
		reason string
		l      lease.Lease
	}{
		{backend.ReasonBackendType, mod(func(l *lease.Lease) { l.Attrs.BackendType = "udp" })},
		{backend.ReasonBackendData, mod(func(l *lease.Lease) { l.Attrs.BackendData = []byte(`{"VNI":1,"VtepMAC":"zz"}`) })},
		{backend.ReasonBackendData, mod(func(l *lease.Lease) { l.Attrs.BackendData = []byte(`{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}`) })},
		{backend.ReasonBackendData, mod(func(l *lease.Lease) { l.Attrs.BackendData = nil })},
		{backend.ReasonBackendData, mod(func(l *lease.Lease) { l.Attrs.BackendData = []byte(`[1,2]`) })},
		{backend.ReasonOutside, mod(func(l *lease.Lease) { l.Subnet = netip.MustParsePrefix("10.6.2.0/24") })},
		{backend.ReasonOutside, mod(func(l *lease.Lease) { l.Subnet = netip.MustParsePrefix("10.0.0.0/8") })},
		{backend.ReasonOverlapSelf, mod(func(l *lease.Lease) { l.Subnet = netip.MustParsePrefix("10.5.1.0/24") })},
		{backend.ReasonOverlapSelf, mod(func(l *lease.Lease) { l.Subnet = netip.MustParsePrefix("10.5.0.0/20") })},
		{backend.ReasonNoPublicIP, mod(func(l *lease.Lease) { l.Attrs.PublicIP = netip.Addr{} })},
		{backend.ReasonFamilyAbsent, mod(func(l *lease.Lease) { l.Subnet = netip.Prefix{}; l.IPv6Subnet = netip.MustParsePrefix("fc00::/64") })},
	} {
		_, err := b.Peer(self, tc.l)
		if got := backend.SkipReason(err); err == nil || got != tc.reason {
			t.Errorf("Peer(%+v) = %v (reason %q), want reason %q", tc.l, err, got, tc.reason)
		}
	}
	if _, err := b.Peer(self, good); err != nil {
		t.Errorf("Peer(good) = %v", err)
	}
}

func TestAttrsRoundTrip(t *testing.T) {
	n := network(t, `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}`)
	a := New(n, underlay, mac1, mac6).Attrs()
	got := fmt.Sprintf("%s %s %s %s %s", a.PublicIP, a.PublicIPv6, a.BackendType, a.BackendData, a.BackendV6Data)
	want := `192.168.1.10 fd00:1::10 vxlan {"VNI":1,"VtepMAC":"0a:00:00:00:00:01"} {"VNI":1,"VtepMAC":"0a:00:00:00:06:06"}`
	if got != want {
		t.Errorf("Attrs = %s, want %s", got, want)
	}
	if _, m, err := DecodeData(a.BackendData); err != nil || m != mac1 {
		t.Errorf("DecodeData = %v %v", m, err)
	}
}

func BenchmarkPlan5000(b *testing.B) {
	n, _ := config.ParseNetwork([]byte(`{"Network":"10.0.0.0/9"}`))
	be := New(n, underlay, mac1, mac6)
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.0.0.0/24")}
	peers := make([]lease.Lease, 5000)
	for i := range peers {
		peers[i] = peer(fmt.Sprintf("10.%d.%d.0/24", 1+i/256, i%256), "",
			fmt.Sprintf("172.16.%d.%d", i/250, i%250+1), "", dataplane.MAC{2, 0, 0, 0, byte(i >> 8), byte(i)}, mac6)
	}
	b.ReportAllocs()
	for b.Loop() {
		backend.Compose(be, self, peers)
	}
}

func FuzzDecodeData(f *testing.F) {
	f.Add([]byte(`{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}`))
	f.Add([]byte(`{"VNI":-1,"VtepMAC":""}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		d, mac, err := DecodeData(raw)
		if err != nil {
			return
		}
		// Accepted data re-encodes to something that decodes the same.
		d2, mac2, err := DecodeData(EncodeData(d.VNI, mac))
		if err != nil || d2.VNI != d.VNI || mac2 != mac {
			t.Fatalf("round trip of %q: %+v %v %v", raw, d2, mac2, err)
		}
	})
}
