package wireguard

import (
	"net/netip"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Test keys: ours (a private key and its public key) and three peers'.
const (
	ourPriv = "uKw7XZuAH/2ALv1NMHg0UYjKe3omWDEECl/B+fQc0F4="
	ourPub  = "PNLLAGfUKuO/hk6PRcC//1ZnSdMj8KBRsw2SgaKBc0Q="
	pubA    = "74X/BFWQXOqzgwI/ZvYo3XAeaJLCkLwuZRQap85GISQ="
	pubB    = "nEYNwd02ardxqK32PsoAHvgAzLGPcZqCTEEXOVCsoQg="
	pubC    = "BAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ="
	pskB64  = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="
)

func mustKey(s string) dataplane.WGKey {
	k, err := wgtypes.ParseKey(s)
	if err != nil {
		panic(err)
	}
	return k
}

// Networks.
const (
	v4Net   = `"Network":"10.5.0.0/16"`
	v6Net   = `"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"`
	dualNet = `"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"`
)

func network(t testing.TB, js string) *config.Network {
	t.Helper()
	n, err := config.ParseNetwork([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// underlay has public addresses of both families (TEST-NET and
// documentation ranges count as public: they are not RFC 1918 or ULA).
var underlay = backend.Underlay{
	Index: 7, Name: "eth0", MTU: 1500,
	LocalIP: netip.MustParseAddr("203.0.113.10"), PublicIP: netip.MustParseAddr("203.0.113.10"),
	LocalIPv6: netip.MustParseAddr("2001:db8:1::10"), PublicIPv6: netip.MustParseAddr("2001:db8:1::10"),
}

// newBackend builds a planner for a network config with our test key.
func newBackend(t testing.TB, js string) *Backend {
	t.Helper()
	n := network(t, js)
	opts, err := ParseOptions(n.Backend.Raw, n.EnableIPv4, n.EnableIPv6)
	if err != nil {
		t.Fatal(err)
	}
	return New(n, underlay, opts, mustKey(ourPriv))
}

// selfOf is our lease in network n.
func selfOf(n *config.Network) lease.Lease {
	var s lease.Lease
	if n.EnableIPv4 {
		s.Subnet = netip.MustParsePrefix("10.5.1.0/24")
	}
	if n.EnableIPv6 {
		s.IPv6Subnet = netip.MustParsePrefix("fc00:0:0:1::/64")
	}
	return s
}

// peer is a wireguard peer lease; data4 and data6 are backend data as
// JSON ("" for none). An empty subnet leaves that family out.
func peer(v4, pub4, data4, v6, pub6, data6 string) lease.Lease {
	l := lease.Lease{Attrs: lease.Attrs{BackendType: "wireguard"}}
	if v4 != "" {
		l.Subnet = netip.MustParsePrefix(v4)
	}
	if pub4 != "" {
		l.Attrs.PublicIP = netip.MustParseAddr(pub4)
	}
	if data4 != "" {
		l.Attrs.BackendData = []byte(data4)
	}
	if v6 != "" {
		l.IPv6Subnet = netip.MustParsePrefix(v6)
	}
	if pub6 != "" {
		l.Attrs.PublicIPv6 = netip.MustParseAddr(pub6)
	}
	if data6 != "" {
		l.Attrs.BackendV6Data = []byte(data6)
	}
	return l
}

func data(pub string, port int) string {
	return `{"PublicKey":"` + pub + `","Port":` + strconv.Itoa(port) + `}`
}

func TestPlan(t *testing.T) {
	const link = "link flannel-wg wireguard listen-port 51820 mtu 1420 public-key " + ourPub
	const link6 = "link flannel-wg-v6 wireguard listen-port 51821 mtu 1420 public-key " + ourPub
	tests := []struct {
		name  string
		net   string
		peers []lease.Lease
		want  []string
	}{
		{
			name: "v4 only",
			net:  `{` + v4Net + `,"Backend":{"Type":"wireguard"}}`,
			peers: []lease.Lease{
				peer("10.5.2.0/24", "192.168.1.11", data(pubA, 51820), "", "", ""),
				peer("10.5.3.0/24", "172.16.0.3", data(pubB, 51999), "", "", ""),
			},
			want: []string{
				link + " addr 10.5.1.0/32",
				"route 10.5.0.0/16 dev flannel-wg",
				"wg flannel-wg peer " + pubA + " endpoint 192.168.1.11:51820 allowed-ips 10.5.2.0/24",
				"wg flannel-wg peer " + pubB + " endpoint 172.16.0.3:51999 allowed-ips 10.5.3.0/24",
			},
		},
		{
			name: "v6 only",
			net:  `{` + v6Net + `,"Backend":{"Type":"wireguard"}}`,
			peers: []lease.Lease{
				peer("", "", "", "fc00:0:0:2::/64", "2001:db8:2::11", data(pubA, 51821)),
			},
			want: []string{
				link6 + " addr fc00:0:0:1::/128",
				"route fc00::/48 dev flannel-wg-v6",
				"wg flannel-wg-v6 peer " + pubA + " endpoint [2001:db8:2::11]:51821 allowed-ips fc00:0:0:2::/64",
			},
		},
		{
			name: "dual stack, separate: a peer on both devices",
			net:  `{` + dualNet + `,"Backend":{"Type":"wireguard"}}`,
			peers: []lease.Lease{
				peer("10.5.2.0/24", "192.168.1.11", data(pubA, 51820), "fc00:0:0:2::/64", "2001:db8:2::11", data(pubA, 51821)),
				// A peer of one family only.
				peer("10.5.3.0/24", "192.168.1.12", data(pubB, 51820), "", "", ""),
			},
			want: []string{
				link + " addr 10.5.1.0/32",
				link6 + " addr fc00:0:0:1::/128",
				"route 10.5.0.0/16 dev flannel-wg",
				"route fc00::/48 dev flannel-wg-v6",
				"wg flannel-wg peer " + pubA + " endpoint 192.168.1.11:51820 allowed-ips 10.5.2.0/24",
				"wg flannel-wg peer " + pubB + " endpoint 192.168.1.12:51820 allowed-ips 10.5.3.0/24",
				"wg flannel-wg-v6 peer " + pubA + " endpoint [2001:db8:2::11]:51821 allowed-ips fc00:0:0:2::/64",
			},
		},
		{
			name: "dual stack, auto: one device, the endpoint chosen per peer",
			net:  `{` + dualNet + `,"Backend":{"Type":"wireguard","Mode":"auto"}}`,
			peers: []lease.Lease{
				// A public IPv4 address: IPv4.
				peer("10.5.2.0/24", "198.51.100.11", data(pubA, 51820), "fc00:0:0:2::/64", "2001:db8:2::11", data(pubA, 51820)),
				// A private IPv4 and a public IPv6 address: IPv6, on the
				// port its BackendV6Data names.
				peer("10.5.3.0/24", "192.168.1.12", data(pubB, 51820), "fc00:0:0:3::/64", "2001:db8:2::12", data(pubB, 51830)),
				// Private addresses of both families: IPv4.
				peer("10.5.4.0/24", "10.0.0.13", data(pubC, 51820), "fc00:0:0:4::/64", "fd00::13", data(pubC, 51820)),
			},
			want: []string{
				link + " addr 10.5.1.0/32 addr fc00:0:0:1::/128",
				"route 10.5.0.0/16 dev flannel-wg",
				"route fc00::/48 dev flannel-wg",
				"wg flannel-wg peer " + pubA + " endpoint 198.51.100.11:51820 allowed-ips 10.5.2.0/24,fc00:0:0:2::/64",
				"wg flannel-wg peer " + pubC + " endpoint 10.0.0.13:51820 allowed-ips 10.5.4.0/24,fc00:0:0:4::/64",
				"wg flannel-wg peer " + pubB + " endpoint [2001:db8:2::12]:51830 allowed-ips 10.5.3.0/24,fc00:0:0:3::/64",
			},
		},
		{
			name: "dual stack, ipv6: every peer at its IPv6 address",
			net:  `{` + dualNet + `,"Backend":{"Type":"wireguard","Mode":"ipv6"}}`,
			peers: []lease.Lease{
				peer("10.5.2.0/24", "198.51.100.11", data(pubA, 51820), "fc00:0:0:2::/64", "fd00::11", data(pubA, 51820)),
				// A v6-only peer in a dual-stack network.
				peer("", "", "", "fc00:0:0:3::/64", "fd00::12", data(pubB, 51820)),
			},
			want: []string{
				link + " addr 10.5.1.0/32 addr fc00:0:0:1::/128",
				"route 10.5.0.0/16 dev flannel-wg",
				"route fc00::/48 dev flannel-wg",
				"wg flannel-wg peer " + pubA + " endpoint [fd00::11]:51820 allowed-ips 10.5.2.0/24,fc00:0:0:2::/64",
				"wg flannel-wg peer " + pubB + " endpoint [fd00::12]:51820 allowed-ips fc00:0:0:3::/64",
			},
		},
		{
			name: "dual stack, ipv4",
			net:  `{` + dualNet + `,"Backend":{"Type":"wireguard","Mode":"ipv4"}}`,
			peers: []lease.Lease{
				peer("10.5.2.0/24", "10.0.0.11", data(pubA, 51820), "fc00:0:0:2::/64", "2001:db8:2::11", data(pubA, 51820)),
			},
			want: []string{
				link + " addr 10.5.1.0/32 addr fc00:0:0:1::/128",
				"route 10.5.0.0/16 dev flannel-wg",
				"route fc00::/48 dev flannel-wg",
				"wg flannel-wg peer " + pubA + " endpoint 10.0.0.11:51820 allowed-ips 10.5.2.0/24,fc00:0:0:2::/64",
			},
		},
		{
			name: "v6 only, auto: the one family there is",
			net:  `{` + v6Net + `,"Backend":{"Type":"wireguard","Mode":"auto"}}`,
			peers: []lease.Lease{
				peer("", "", "", "fc00:0:0:2::/64", "fd00::11", data(pubA, 51820)),
			},
			want: []string{
				link + " addr fc00:0:0:1::/128",
				"route fc00::/48 dev flannel-wg",
				"wg flannel-wg peer " + pubA + " endpoint [fd00::11]:51820 allowed-ips fc00:0:0:2::/64",
			},
		},
		{
			name: "PSK, keepalive, port and MTU",
			net: `{` + v4Net + `,"Backend":{"Type":"wireguard","PSK":"` + pskB64 + `",` +
				`"PersistentKeepaliveInterval":25,"ListenPort":40000,"MTU":1400}}`,
			peers: []lease.Lease{
				peer("10.5.2.0/24", "192.168.1.11", data(pubA, 40000), "", "", ""),
			},
			want: []string{
				"link flannel-wg wireguard listen-port 40000 mtu 1320 public-key " + ourPub + " addr 10.5.1.0/32",
				"route 10.5.0.0/16 dev flannel-wg",
				"wg flannel-wg peer " + pubA + " endpoint 192.168.1.11:40000 allowed-ips 10.5.2.0/24 preshared-key (set) persistent-keepalive 25",
			},
		},
		{
			name: "port fallback: a peer without Port is reached on our port of that family",
			net:  `{` + dualNet + `,"Backend":{"Type":"wireguard","ListenPort":40000,"ListenPortV6":40001}}`,
			peers: []lease.Lease{
				peer("10.5.2.0/24", "192.168.1.11", `{"PublicKey":"`+pubA+`"}`,
					"fc00:0:0:2::/64", "2001:db8:2::11", `{"PublicKey":"`+pubA+`","Port":0}`),
			},
			want: []string{
				"link flannel-wg wireguard listen-port 40000 mtu 1420 public-key " + ourPub + " addr 10.5.1.0/32",
				"link flannel-wg-v6 wireguard listen-port 40001 mtu 1420 public-key " + ourPub + " addr fc00:0:0:1::/128",
				"route 10.5.0.0/16 dev flannel-wg",
				"route fc00::/48 dev flannel-wg-v6",
				"wg flannel-wg peer " + pubA + " endpoint 192.168.1.11:40000 allowed-ips 10.5.2.0/24",
				"wg flannel-wg-v6 peer " + pubA + " endpoint [2001:db8:2::11]:40001 allowed-ips fc00:0:0:2::/64",
			},
		},
		{
			name: "port fallback on a single device: its one port",
			net:  `{` + dualNet + `,"Backend":{"Type":"wireguard","Mode":"ipv6","ListenPort":40000}}`,
			peers: []lease.Lease{
				peer("10.5.2.0/24", "192.168.1.11", `{"PublicKey":"`+pubA+`"}`,
					"fc00:0:0:2::/64", "2001:db8:2::11", `{"PublicKey":"`+pubA+`"}`),
			},
			want: []string{
				"link flannel-wg wireguard listen-port 40000 mtu 1420 public-key " + ourPub + " addr 10.5.1.0/32 addr fc00:0:0:1::/128",
				"route 10.5.0.0/16 dev flannel-wg",
				"route fc00::/48 dev flannel-wg",
				"wg flannel-wg peer " + pubA + " endpoint [2001:db8:2::11]:40000 allowed-ips 10.5.2.0/24,fc00:0:0:2::/64",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackend(t, tt.net)
			self := selfOf(b.net)
			for _, p := range tt.peers {
				if _, err := b.Peer(self, p); err != nil {
					t.Fatalf("Peer(%s): %v", p.Key(), err)
				}
			}
			got := backend.Compose(b, self, tt.peers).Lines()
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
			if again := backend.Compose(b, self, tt.peers).Lines(); !cmp.Equal(got, again) {
				t.Error("planning is not deterministic")
			}
			// Peer is pure: the same lease gives equal objects.
			for _, p := range tt.peers {
				o1, _ := b.Peer(self, p)
				o2, _ := b.Peer(self, p)
				if !o1.Equal(o2) {
					t.Errorf("Peer(%s) differs between calls", p.Key())
				}
			}
		})
	}
}

// TestPeerObjects checks what Lines does not show: the PSK's value, and
// that the device keeps our private key.
func TestPeerObjects(t *testing.T) {
	b := newBackend(t, `{`+v4Net+`,"Backend":{"Type":"wireguard","PSK":"`+pskB64+`","PersistentKeepaliveInterval":5}}`)
	self := selfOf(b.net)
	o, err := b.Peer(self, peer("10.5.2.0/24", "192.168.1.11", data(pubA, 51820), "", "", ""))
	if err != nil {
		t.Fatal(err)
	}
	want := []dataplane.WGPeer{{
		Dev: "flannel-wg", PublicKey: mustKey(pubA), Endpoint: netip.MustParseAddrPort("192.168.1.11:51820"),
		AllowedIPs: [2]netip.Prefix{netip.MustParsePrefix("10.5.2.0/24")}, PSK: mustKey(pskB64), Keepalive: 5,
	}}
	if diff := cmp.Diff(want, o.WGPeers, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
		cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("(-want +got)\n%s", diff)
	}
	if len(o.Routes)+len(o.Neighs)+len(o.FDB) != 0 {
		t.Errorf("peer plans more than WireGuard peers: %+v", o)
	}
	l := b.PlanBase(self).Links["flannel-wg"]
	if l.Kind != dataplane.KindWireGuard || l.PrivateKey != mustKey(ourPriv) {
		t.Errorf("device %+v: wrong kind or key", l.Name)
	}
}

func TestPeerSkips(t *testing.T) {
	const zeroKey = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	v4 := newBackend(t, `{`+v4Net+`,"Backend":{"Type":"wireguard"}}`)
	dual := newBackend(t, `{`+dualNet+`,"Backend":{"Type":"wireguard"}}`)
	dualAuto := newBackend(t, `{`+dualNet+`,"Backend":{"Type":"wireguard","Mode":"auto"}}`)
	dual6 := newBackend(t, `{`+dualNet+`,"Backend":{"Type":"wireguard","Mode":"ipv6"}}`)
	dual4 := newBackend(t, `{`+dualNet+`,"Backend":{"Type":"wireguard","Mode":"ipv4"}}`)
	good := peer("10.5.2.0/24", "192.168.1.11", data(pubA, 51820), "", "", "")
	goodDual := peer("10.5.2.0/24", "192.168.1.11", data(pubA, 51820), "fc00:0:0:2::/64", "2001:db8:2::11", data(pubA, 51821))
	mod := func(l lease.Lease, f func(*lease.Lease)) lease.Lease { f(&l); return l }
	for _, tc := range []struct {
		name   string
		b      *Backend
		l      lease.Lease
		reason string
	}{
		{"another backend", v4, mod(good, func(l *lease.Lease) { l.Attrs.BackendType = "vxlan" }), backend.ReasonBackendType},
		{"no data", v4, mod(good, func(l *lease.Lease) { l.Attrs.BackendData = nil }), backend.ReasonBackendData},
		{"no key", v4, mod(good, func(l *lease.Lease) { l.Attrs.BackendData = []byte(`{"Port":51820}`) }), backend.ReasonBackendData},
		{"bad key", v4, mod(good, func(l *lease.Lease) { l.Attrs.BackendData = []byte(data("nope", 51820)) }), backend.ReasonBackendData},
		{"short key", v4, mod(good, func(l *lease.Lease) { l.Attrs.BackendData = []byte(data("AAAA", 51820)) }), backend.ReasonBackendData},
		{"zero key", v4, mod(good, func(l *lease.Lease) { l.Attrs.BackendData = []byte(data(zeroKey, 51820)) }), backend.ReasonBackendData},
		{"our key", v4, mod(good, func(l *lease.Lease) { l.Attrs.BackendData = []byte(data(ourPub, 51820)) }), backend.ReasonBackendData},
		{"port too large", v4, mod(good, func(l *lease.Lease) { l.Attrs.BackendData = []byte(data(pubA, 65536)) }), backend.ReasonBackendData},
		{"negative port", v4, mod(good, func(l *lease.Lease) { l.Attrs.BackendData = []byte(`{"PublicKey":"` + pubA + `","Port":-1}`) }), backend.ReasonBackendData},
		{"not an object", v4, mod(good, func(l *lease.Lease) { l.Attrs.BackendData = []byte(`[1]`) }), backend.ReasonBackendData},
		{"outside the network", v4, mod(good, func(l *lease.Lease) { l.Subnet = netip.MustParsePrefix("10.6.2.0/24") }), backend.ReasonOutside},
		{"our subnet", v4, mod(good, func(l *lease.Lease) { l.Subnet = netip.MustParsePrefix("10.5.1.0/24") }), backend.ReasonOverlapSelf},
		{"no public IP", v4, mod(good, func(l *lease.Lease) { l.Attrs.PublicIP = netip.Addr{} }), backend.ReasonNoPublicIP},
		{"bad v6 data", dual, mod(goodDual, func(l *lease.Lease) { l.Attrs.BackendV6Data = []byte(`{}`) }), backend.ReasonBackendData},
		{"no v6 data", dual, mod(goodDual, func(l *lease.Lease) { l.Attrs.BackendV6Data = nil }), backend.ReasonBackendData},
		{"our key on v6", dual, mod(goodDual, func(l *lease.Lease) { l.Attrs.BackendV6Data = []byte(data(ourPub, 51821)) }), backend.ReasonBackendData},
		{"two keys, one device", dualAuto, mod(goodDual, func(l *lease.Lease) { l.Attrs.BackendV6Data = []byte(data(pubB, 51821)) }), backend.ReasonBackendData},
		{"ipv6 mode, peer without IPv6", dual6, good, backend.ReasonNoPublicIP},
		{"ipv4 mode, peer without IPv4", dual4, peer("", "", "", "fc00:0:0:2::/64", "2001:db8:2::11", data(pubA, 51821)), backend.ReasonNoPublicIP},
	} {
		self := selfOf(tc.b.net)
		o, err := tc.b.Peer(self, tc.l)
		if got := backend.SkipReason(err); err == nil || got != tc.reason {
			t.Errorf("%s: Peer = %v (reason %q), want reason %q", tc.name, err, got, tc.reason)
		}
		if o.Len() != 0 {
			t.Errorf("%s: a skipped peer plans %+v", tc.name, o)
		}
	}
	// The unmodified leases are fine.
	for _, b := range []*Backend{dual, dualAuto, dual6, dual4} {
		if _, err := b.Peer(selfOf(b.net), goodDual); err != nil {
			t.Errorf("mode %s: Peer(goodDual) = %v", b.opts.Mode, err)
		}
	}
}

func TestMTU(t *testing.T) {
	for _, tc := range []struct {
		net  string
		want int
	}{
		{`{` + v4Net + `,"Backend":{"Type":"wireguard"}}`, 1420},
		{`{` + dualNet + `,"Backend":{"Type":"wireguard"}}`, 1420},
		{`{` + v6Net + `,"Backend":{"Type":"wireguard","MTU":9000}}`, 8920},
		{`{` + v4Net + `,"Backend":{"Type":"wireguard","MTU":0}}`, 1420},
	} {
		b := newBackend(t, tc.net)
		if got := b.MTU(); got != tc.want {
			t.Errorf("%s: MTU = %d, want %d", tc.net, got, tc.want)
		}
		for name, l := range b.PlanBase(selfOf(b.net)).Links {
			if l.MTU != tc.want {
				t.Errorf("%s: %s has MTU %d, want %d", tc.net, name, l.MTU, tc.want)
			}
		}
	}
}

func TestResume(t *testing.T) {
	b := newBackend(t, `{`+dualNet+`,"Backend":{"Type":"wireguard"}}`)
	old := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: lease.Attrs{
		BackendType: "wireguard", PublicIP: netip.MustParseAddr("203.0.113.99"),
		BackendData: []byte(data(pubA, 1)), BackendV6Data: []byte(data(pubA, 2)),
	}}
	got := b.Resume(old)
	if !got.Equal(b.Attrs()) {
		t.Errorf("Resume = %+v, want Attrs() %+v", got, b.Attrs())
	}
	if d, err := DecodeData(got.BackendData); err != nil || d.PublicKey != ourPub {
		t.Errorf("Resume publishes %+v (%v), want our key from the key file", d, err)
	}
}

// TestAutoFamily: Mode auto's choice of endpoint, upstream's rule, plus
// never a family the peer has no address of.
func TestAutoFamily(t *testing.T) {
	const net = `{` + dualNet + `,"Backend":{"Type":"wireguard","Mode":"auto"}}`
	ula := underlay
	ula.PublicIPv6 = netip.MustParseAddr("fd00:1::10")
	no4 := underlay
	no4.PublicIP = netip.Addr{}
	for _, tc := range []struct {
		name       string
		u          backend.Underlay
		pub4, pub6 string
		want6      bool
	}{
		{"public v4", underlay, "198.51.100.1", "2001:db8::1", false},
		{"private v4, public v6", underlay, "10.1.2.3", "2001:db8::1", true},
		{"172.16/12 is private", underlay, "172.31.0.1", "2001:db8::1", true},
		{"172.32 is not", underlay, "172.32.0.1", "2001:db8::1", false},
		{"private v4, ULA v6", underlay, "192.168.0.1", "fd12::1", false},
		{"private v4, public v6, but ours is ULA", ula, "192.168.0.1", "2001:db8::1", false},
		{"public v4, but we have none", no4, "198.51.100.1", "2001:db8::1", true},
		{"no v6", underlay, "10.1.2.3", "", false},
		{"no v4", underlay, "", "fd12::1", true},
	} {
		n := network(t, net)
		opts, _ := ParseOptions(n.Backend.Raw, true, true)
		b := New(n, tc.u, opts, mustKey(ourPriv))
		p := peer("10.5.2.0/24", tc.pub4, data(pubA, 1), "fc00:0:0:2::/64", tc.pub6, data(pubA, 2))
		v6, ok := b.endpointFamily(p)
		if !ok || v6 != tc.want6 {
			t.Errorf("%s: v6 = %v (ok %v), want %v", tc.name, v6, ok, tc.want6)
		}
	}
	if b := newBackend(t, net); b.Type() != "wireguard" {
		t.Errorf("Type = %q", b.Type())
	}
}
