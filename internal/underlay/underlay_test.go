package underlay

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/dataplane"
)

type fakeSys struct {
	ifs        []dataplane.Interface
	route      map[netip.Addr]int
	def4, def6 int
}

func (f fakeSys) Interfaces() ([]dataplane.Interface, error) {
	return append([]dataplane.Interface(nil), f.ifs...), nil
}
func (f fakeSys) RouteTo(dst netip.Addr) (int, netip.Addr, error) {
	if i, ok := f.route[dst]; ok {
		return i, netip.Addr{}, nil
	}
	return 0, netip.Addr{}, errors.New("network unreachable")
}
func (f fakeSys) DefaultRouteInterfaces() (int, int, error) { return f.def4, f.def6, nil }

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

var sys = fakeSys{
	ifs: []dataplane.Interface{
		{Index: 1, Name: "lo", MTU: 65536, Addrs: pfx("127.0.0.1/8")},
		{Index: 2, Name: "eth0", MTU: 1500, Addrs: pfx("192.168.1.10/24", "fe80::1/64", "fd00:1::10/64")},
		{Index: 3, Name: "eth1", MTU: 9000, Addrs: pfx("10.9.0.5/16", "10.9.0.6/16")},
		{Index: 4, Name: "eth2", MTU: 1500, Addrs: pfx("172.16.0.4/24", "fd00:2::4/64")},
	},
	route: map[netip.Addr]int{netip.MustParseAddr("10.9.1.1"): 3},
	def4:  2, def6: 2,
}

func TestSelect(t *testing.T) {
	for _, tc := range []struct {
		name       string
		o          Options
		wantName   string
		wantLocal  string
		wantPublic string
		wantLocal6 string
	}{
		{"default route", Options{IPv4: true}, "eth0", "192.168.1.10", "192.168.1.10", "fd00:1::10"},
		{"by name", Options{IPv4: true, Ifaces: []string{"nope", "eth1"}}, "eth1", "10.9.0.5", "10.9.0.5", ""},
		{"by address picks that address", Options{IPv4: true, Ifaces: []string{"10.9.0.6"}}, "eth1", "10.9.0.6", "10.9.0.6", ""},
		{"regex on name", Options{IPv4: true, Regexes: []string{"^eth1$"}}, "eth1", "10.9.0.5", "10.9.0.5", ""},
		{"regex on address", Options{IPv4: true, Regexes: []string{`^192\.168\.`}}, "eth0", "192.168.1.10", "192.168.1.10", "fd00:1::10"},
		{"can reach", Options{IPv4: true, CanReach: netip.MustParseAddr("10.9.1.1")}, "eth1", "10.9.0.5", "10.9.0.5", ""},
		{"public ip override", Options{IPv4: true, PublicIP: netip.MustParseAddr("203.0.113.7")}, "eth0", "192.168.1.10", "203.0.113.7", "fd00:1::10"},
		{"ipv6 only", Options{IPv6: true}, "eth0", "192.168.1.10", "192.168.1.10", "fd00:1::10"},
		// Upstream's order: --iface candidates that match nothing fall
		// through to --iface-regex, then --iface-can-reach.
		{"iface misses, regex", Options{IPv4: true, Ifaces: []string{"eth9", "10.0.0.1"}, Regexes: []string{"^eth1$"}},
			"eth1", "10.9.0.5", "10.9.0.5", ""},
		{"iface and regex miss, can reach", Options{IPv4: true, Ifaces: []string{"eth9"}, Regexes: []string{"^wlan"},
			CanReach: netip.MustParseAddr("10.9.1.1")}, "eth1", "10.9.0.5", "10.9.0.5", ""},
		{"iface wins over regex", Options{IPv4: true, Ifaces: []string{"eth0"}, Regexes: []string{"^eth1$"}},
			"eth0", "192.168.1.10", "192.168.1.10", "fd00:1::10"},
		// A candidate without an address of a family in use does not
		// match (upstream's lookup fails on it and tries the next).
		{"iface without ipv6 skipped", Options{IPv4: true, IPv6: true, Ifaces: []string{"eth1", "eth2"}},
			"eth2", "172.16.0.4", "172.16.0.4", "fd00:2::4"},
		// Upstream matches a regex against every interface's addresses
		// before any name: eth2's address wins over eth1's earlier name.
		{"regex addresses before names", Options{IPv4: true, Regexes: []string{`^172\.|eth1`}},
			"eth2", "172.16.0.4", "172.16.0.4", ""},
		// With only --public-ip(v6), upstream uses the interface holding
		// that address, with it as the encapsulation source.
		{"public ip held by an interface", Options{IPv4: true, PublicIP: netip.MustParseAddr("10.9.0.6")},
			"eth1", "10.9.0.6", "10.9.0.6", ""},
		{"public ipv6 held by an interface", Options{IPv6: true, PublicIPv6: netip.MustParseAddr("fd00:2::4")},
			"eth2", "172.16.0.4", "172.16.0.4", "fd00:2::4"},
		{"dual stack public ips on one interface", Options{IPv4: true, IPv6: true,
			PublicIP: netip.MustParseAddr("172.16.0.4"), PublicIPv6: netip.MustParseAddr("fd00:2::4")},
			"eth2", "172.16.0.4", "172.16.0.4", "fd00:2::4"},
		// --public-ipv6 plays no part in an IPv4-only network.
		{"public ipv6 ignored for ipv4", Options{IPv4: true, PublicIPv6: netip.MustParseAddr("fd00:2::4")},
			"eth0", "192.168.1.10", "192.168.1.10", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := Select(sys, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if u.Name != tc.wantName || u.LocalIP.String() != tc.wantLocal || u.PublicIP.String() != tc.wantPublic {
				t.Errorf("got %s local %s public %s", u.Name, u.LocalIP, u.PublicIP)
			}
			if tc.wantLocal6 != "" && u.LocalIPv6.String() != tc.wantLocal6 {
				t.Errorf("LocalIPv6 = %s, want %s", u.LocalIPv6, tc.wantLocal6)
			}
		})
	}
}

func TestSelectErrors(t *testing.T) {
	for _, o := range []Options{
		{IPv4: true, Ifaces: []string{"eth9"}},
		{IPv4: true, Regexes: []string{"("}},
		{IPv4: true, Regexes: []string{"^wlan"}},
		{IPv4: true, CanReach: netip.MustParseAddr("8.8.8.8")},
		{IPv6: true, Ifaces: []string{"eth1"}}, // eth1 has no IPv6
		// Given flags that match nothing do not fall back to the default
		// route, as upstream.
		{IPv4: true, Ifaces: []string{"eth9"}, Regexes: []string{"^wlan"}, CanReach: netip.MustParseAddr("8.8.8.8")},
		// Upstream requires the two public addresses on one interface.
		{IPv4: true, IPv6: true, PublicIP: netip.MustParseAddr("10.9.0.6"), PublicIPv6: netip.MustParseAddr("fd00:2::4")},
	} {
		_, err := Select(sys, o)
		if err == nil {
			t.Errorf("Select(%+v): want error", o)
		} else if strings.Contains(err.Error(), "\n") {
			t.Errorf("Select(%+v): error not on one line: %q", o, err)
		}
	}
	_, err := Select(sys, Options{IPv4: true, Ifaces: []string{"eth9"}, Regexes: []string{"^wlan"}})
	for _, want := range []string{"--iface eth9", "--iface-regex ^wlan"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Select error %v: want it to name %q", err, want)
		}
	}
	if _, err := Select(fakeSys{ifs: sys.ifs}, Options{IPv4: true}); err == nil {
		t.Error("no default route: want error")
	}
}
