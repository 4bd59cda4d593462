package backend_test

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

func TestCheckPeerSubnets(t *testing.T) {
	n, err := config.ParseNetwork([]byte(`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}`))
	if err != nil {
		t.Fatal(err)
	}
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	self := lease.Lease{Subnet: p("10.5.1.0/24"), IPv6Subnet: p("fc00:0:0:1::/64"),
		Attrs: lease.Attrs{PublicIP: a("192.168.0.1"), PublicIPv6: a("fd00::1")}}
	peer := func(v4, v6, ip4, ip6 string) lease.Lease {
		var l lease.Lease
		if v4 != "" {
			l.Subnet, l.Attrs.PublicIP = p(v4), a(ip4)
		}
		if v6 != "" {
			l.IPv6Subnet, l.Attrs.PublicIPv6 = p(v6), a(ip6)
		}
		return l
	}
	for _, tc := range []struct {
		name string
		peer lease.Lease
		want string // reason; "" accepted
	}{
		{"good", peer("10.5.2.0/24", "fc00:0:0:2::/64", "192.168.0.2", "fd00::2"), ""},
		{"outside", peer("10.6.2.0/24", "", "192.168.0.2", ""), backend.ReasonOutside},
		{"wider than the network", peer("10.0.0.0/8", "", "192.168.0.2", ""), backend.ReasonOutside},
		{"overlaps ours", peer("10.5.0.0/23", "", "192.168.0.2", ""), backend.ReasonOverlapSelf},
		{"inside ours", peer("10.5.1.128/25", "", "192.168.0.2", ""), backend.ReasonOverlapSelf},
		{"own public IP", peer("10.5.2.0/24", "", "192.168.0.1", ""), backend.ReasonOwnPublicIP},
		{"own public IPv6", peer("", "fc00:0:0:2::/64", "", "fd00::1"), backend.ReasonOwnPublicIP},
		{"own public IPv6, other IPv4", peer("10.5.2.0/24", "fc00:0:0:2::/64", "192.168.0.2", "fd00::1"), backend.ReasonOwnPublicIP},
		{"no public IP", lease.Lease{Subnet: p("10.5.2.0/24")}, backend.ReasonNoPublicIP},
	} {
		err := backend.CheckPeerSubnets(n, self, tc.peer)
		got := ""
		if err != nil {
			got = backend.SkipReason(err)
		}
		if got != tc.want {
			t.Errorf("%s: reason %q (%v), want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestSkipReason(t *testing.T) {
	_, keyErr := lease.Decode("bogus", []byte(`{}`))
	_, bigErr := lease.Decode("10.5.1.0-24", make([]byte, lease.MaxValueSize+1))
	_, jsonErr := lease.Decode("10.5.1.0-24", []byte(`{`))
	for _, tc := range []struct {
		err  error
		want string
	}{
		{keyErr, backend.ReasonBadKey},
		{bigErr, backend.ReasonTooLarge},
		{jsonErr, backend.ReasonDecode},
		{fmt.Errorf("wrapped: %w", backend.Skipf(backend.ReasonNotOnLink, "x")), backend.ReasonNotOnLink},
		{errors.New("other"), backend.ReasonDecode},
	} {
		if got := backend.SkipReason(tc.err); got != tc.want {
			t.Errorf("SkipReason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
