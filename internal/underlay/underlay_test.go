package underlay

import (
	"errors"
	"net/netip"
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
	} {
		if _, err := Select(sys, o); err == nil {
			t.Errorf("Select(%+v): want error", o)
		}
	}
	if _, err := Select(fakeSys{ifs: sys.ifs}, Options{IPv4: true}); err == nil {
		t.Error("no default route: want error")
	}
}
