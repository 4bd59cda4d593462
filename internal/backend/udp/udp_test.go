package udp

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

var underlay = backend.Underlay{
	Index: 2, Name: "eth0", MTU: 1500,
	Prefixes: []netip.Prefix{netip.MustParsePrefix("192.168.1.10/24")},
	LocalIP:  netip.MustParseAddr("192.168.1.10"), PublicIP: netip.MustParseAddr("203.0.113.10"),
}

func network(t testing.TB, js string) *config.Network {
	t.Helper()
	n, err := config.ParseNetwork([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func newBackend(t testing.TB, js string) *Backend {
	t.Helper()
	b, err := New(network(t, js), underlay)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func self() lease.Lease {
	return lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: lease.Attrs{PublicIP: underlay.PublicIP}}
}

// TestConfig: Port and its default; what the backend refuses, in one
// line naming the field.
func TestConfig(t *testing.T) {
	for _, tc := range []struct {
		net      string
		port     uint16
		errField string
	}{
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}`, 8285, ""},
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":9000}}`, 9000, ""},
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":0}}`, 8285, ""},
		{`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"udp"}}`, 0, "EnableIPv6"},
		{`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"udp"}}`, 0, "EnableIPv6"},
	} {
		b, err := New(network(t, tc.net), underlay)
		if tc.errField != "" {
			var fe *config.FieldError
			if !errors.As(err, &fe) || fe.Field != tc.errField || strings.Contains(err.Error(), "\n") {
				t.Errorf("%s: err = %v, want a one-line error naming %s", tc.net, err, tc.errField)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.net, err)
			continue
		}
		if b.Port() != tc.port {
			t.Errorf("%s: port %d, want %d", tc.net, b.Port(), tc.port)
		}
	}
	for _, bad := range []string{
		`{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":70000}}`,
		`{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":"8285"}}`,
	} {
		_, err := config.ParseNetwork([]byte(bad))
		var fe *config.FieldError
		if !errors.As(err, &fe) || fe.Field != "Backend.Port" {
			t.Errorf("%s: err = %v, want one naming Backend.Port", bad, err)
		}
	}
	u := underlay
	u.MTU = 90
	if _, err := New(network(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}`), u); err == nil || !strings.Contains(err.Error(), "MTU 90") {
		t.Errorf("underlay MTU 90: err = %v, want one naming the MTU", err)
	}
}

// TestLeaseEncodeGolden: the lease value we write is byte for byte what
// upstream's flanneld writes for a udp host: the public IP, nothing else.
func TestLeaseEncodeGolden(t *testing.T) {
	b := newBackend(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}`)
	got, err := json.Marshal(b.Attrs())
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"PublicIP":"203.0.113.10","PublicIPv6":null}`; string(got) != want {
		t.Errorf("lease:\n got %s\nwant %s", got, want)
	}
	if r := b.Resume(lease.Lease{Attrs: lease.Attrs{PublicIP: underlay.PublicIP, BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1}`)}}); !r.Equal(b.Attrs()) {
		t.Errorf("Resume from a vxlan lease = %+v, want our udp attrs", r)
	}
}

// TestLeaseDecodeGolden: leases as upstream's udp hosts write them plan
// the forwarding entries they should; leases of other backends are
// skipped by reason.
func TestLeaseDecodeGolden(t *testing.T) {
	b := newBackend(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":8300}}`)
	for _, tc := range []struct {
		name, key, value string
		want             []string
		reason           string
	}{
		{"upstream", "10.5.2.0-24", `{"PublicIP":"192.168.1.11","PublicIPv6":null}`,
			[]string{"udp flannel0 peer 10.5.2.0/24 endpoint 192.168.1.11:8300"}, ""},
		{"ours, written by an older encoder without PublicIPv6", "10.5.3.0-24", `{"PublicIP":"192.168.1.12"}`,
			[]string{"udp flannel0 peer 10.5.3.0/24 endpoint 192.168.1.12:8300"}, ""},
		{"unknown fields are ignored", "10.5.4.0-24", `{"PublicIP":"192.168.1.13","PublicIPv6":null,"Future":{"a":1}}`,
			[]string{"udp flannel0 peer 10.5.4.0/24 endpoint 192.168.1.13:8300"}, ""},
		{"a vxlan host", "10.5.5.0-24", `{"PublicIP":"192.168.1.14","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}`,
			nil, backend.ReasonBackendType},
		{"outside the network", "10.6.5.0-24", `{"PublicIP":"192.168.1.15","PublicIPv6":null}`,
			nil, backend.ReasonOutside},
		{"our own public IP", "10.5.6.0-24", `{"PublicIP":"203.0.113.10","PublicIPv6":null}`,
			nil, backend.ReasonOwnPublicIP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := lease.Decode(tc.key, []byte(tc.value))
			if err != nil {
				t.Fatal(err)
			}
			o, err := b.Peer(self(), p)
			if tc.reason != "" {
				if got := backend.SkipReason(err); err == nil || got != tc.reason {
					t.Errorf("err = %v (reason %q), want reason %q", err, got, tc.reason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, u := range o.UDPPeers {
				got = append(got, "udp "+u.String())
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

// TestPlan: the whole plan for a host and two peers.
func TestPlan(t *testing.T) {
	b := newBackend(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}`)
	peer := func(subnet, pub string) lease.Lease {
		return lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(pub)}}
	}
	got := backend.Compose(b, self(), []lease.Lease{peer("10.5.2.0/24", "192.168.1.11"), peer("10.5.3.0/24", "172.16.0.3")}).Lines()
	want := []string{
		"link flannel0 udp local 192.168.1.10 port 8285 mtu 1472 addr 10.5.1.0/32",
		"route 10.5.0.0/16 dev flannel0",
		"udp flannel0 peer 10.5.2.0/24 endpoint 192.168.1.11:8285",
		"udp flannel0 peer 10.5.3.0/24 endpoint 172.16.0.3:8285",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("plan (-want +got):\n%s", d)
	}
	if b.MTU() != 1472 {
		t.Errorf("MTU %d, want 1472 (1500 - 28)", b.MTU())
	}
}
