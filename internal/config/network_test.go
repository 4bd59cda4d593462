package config

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseNetworkDefaults(t *testing.T) {
	tests := []struct {
		name string
		json string
		want Network
	}{
		{
			name: "v4 /16 gets /24 subnets, first subnet skipped",
			json: `{"Network":"10.5.0.0/16"}`,
			want: Network{EnableIPv4: true, Network: mp("10.5.0.0/16"), SubnetLen: 24,
				SubnetMin: ma("10.5.1.0"), SubnetMax: ma("10.5.255.0"),
				Backend: Backend{Type: "vxlan", VNI: 1}},
		},
		{
			name: "small network gets prefix+2, lowercase keys accepted",
			json: `{"network":"10.5.0.0/24","backend":{"type":"host-gw"}}`,
			want: Network{EnableIPv4: true, Network: mp("10.5.0.0/24"), SubnetLen: 26,
				SubnetMin: ma("10.5.0.64"), SubnetMax: ma("10.5.0.192"),
				Backend: Backend{Type: "host-gw", VNI: 1}},
		},
		{
			name: "non-canonical network is masked",
			json: `{"Network":"10.5.3.7/16","SubnetLen":20,"Backend":{"Type":"vxlan","VNI":4,"Port":4789,"DirectRouting":true,"MTU":1400}}`,
			want: Network{EnableIPv4: true, Network: mp("10.5.0.0/16"), SubnetLen: 20,
				SubnetMin: ma("10.5.16.0"), SubnetMax: ma("10.5.240.0"),
				Backend: Backend{Type: "vxlan", VNI: 4, Port: 4789, DirectRouting: true, MTU: 1400}},
		},
		{
			name: "dual stack",
			json: `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","EnableNFTables":true}`,
			want: Network{EnableIPv4: true, EnableIPv6: true, EnableNFTables: ptr(true),
				Network: mp("10.5.0.0/16"), SubnetLen: 24, SubnetMin: ma("10.5.1.0"), SubnetMax: ma("10.5.255.0"),
				IPv6Network: mp("fc00::/48"), IPv6SubnetLen: 64, IPv6SubnetMin: ma("fc00:0:0:1::"), IPv6SubnetMax: ma("fc00:0:0:ffff::"),
				Backend: Backend{Type: "vxlan", VNI: 1}},
		},
		{
			name: "ipv6 only with explicit min/max",
			json: `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/56","IPv6SubnetMin":"fc00:0:0:10::","IPv6SubnetMax":"fc00:0:0:20::"}`,
			want: Network{EnableIPv6: true,
				IPv6Network: mp("fc00::/56"), IPv6SubnetLen: 64, IPv6SubnetMin: ma("fc00:0:0:10::"), IPv6SubnetMax: ma("fc00:0:0:20::"),
				Backend: Backend{Type: "vxlan", VNI: 1}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseNetwork([]byte(tt.json))
			if err != nil {
				t.Fatalf("ParseNetwork: %v", err)
			}
			got.Backend.Raw = nil // the input itself, kept for backends with options of their own
			if diff := cmp.Diff(tt.want, *got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
				cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

// TestBackendMTU: Backend.MTU is the underlay MTU the VXLAN devices are
// carved from (50 bytes less over IPv4, 70 over IPv6), so the smallest
// valid value leaves the family's minimum device MTU: 68 over IPv4, 1280
// over IPv6. host-gw ignores the field, as upstream does; wireguard
// checks it itself (its overhead is 80 bytes).
func TestBackendMTU(t *testing.T) {
	const dual = `"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"`
	for _, tc := range []struct {
		json string
		want string // "" accepted, else the whole error
	}{
		{`{"Network":"10.0.0.0/16","Backend":{"MTU":118}}`, ""},
		{`{"Network":"10.0.0.0/16","Backend":{"MTU":117}}`,
			"network config: Backend.MTU: 117 leaves 67 for flannel.1, below IPv4's minimum 68"},
		{`{` + dual + `,"Backend":{"MTU":1350}}`, ""},
		{`{` + dual + `,"Backend":{"VNI":4,"MTU":1349}}`,
			"network config: Backend.MTU: 1349 leaves 1279 for flannel-v6.4, below IPv6's minimum 1280"},
		{`{"Network":"10.0.0.0/16","Backend":{"MTU":65536}}`,
			"network config: Backend.MTU: must be at most 65535, got 65536"},
		{`{"Network":"10.0.0.0/16","Backend":{"MTU":-1}}`,
			"network config: Backend.MTU: must not be negative, got -1"},
		{`{"Network":"10.0.0.0/16","Backend":{"Type":"host-gw","MTU":20}}`, ""},
		{`{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard","MTU":100}}`, ""},
	} {
		_, err := ParseNetwork([]byte(tc.json))
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("ParseNetwork(%s):\n got %q\nwant %q", tc.json, got, tc.want)
		}
	}
}

func TestParseNetworkErrorsNameTheField(t *testing.T) {
	tests := []struct{ json, field string }{
		{`{}`, "Network"},
		{`{"Network":"banana"}`, "Network"},
		{`{"Network":"fc00::/48"}`, "Network"},
		{`{"Network":"10.0.0.0/29"}`, "Network"},
		{`{"Network":"10.0.0.0/16","SubnetLen":31}`, "SubnetLen"},
		{`{"Network":"10.0.0.0/16","SubnetLen":17}`, "SubnetLen"},
		{`{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}`, "SubnetMin"},
		{`{"Network":"10.0.0.0/16","SubnetMax":"10.0.3.7"}`, "SubnetMax"},
		{`{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.3.0"}`, "SubnetMax"},
		{`{"Network":"10.0.0.0/16","SubnetLen":"24"}`, "SubnetLen"},
		{`{"Network":"10.0.0.0/16","EnableIPv6":true}`, "IPv6Network"},
		{`{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127}`, "IPv6SubnetLen"},
		{`{"EnableIPv4":false}`, "EnableIPv4"},
		{`{"Network":"10.0.0.0/16","Backend":{"Type":7}}`, "Backend.Type"},
		{`{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}`, "Backend.VNI"},
		{`{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Port":70000}}`, "Backend.Port"},
		{`{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","MTU":20}}`, "Backend.MTU"},
		{`{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":"x"}}`, "Backend.VNI"},
		{`{"Network":`, "invalid JSON"},
		{`{"Network":"10.0.0.0/16"}}`, "invalid JSON"},
		{`{"Network":"10.0.0.0/16"} {"Network":"10.1.0.0/16"}`, "invalid JSON"},
	}
	for _, tt := range tests {
		_, err := ParseNetwork([]byte(tt.json))
		if err == nil {
			t.Errorf("ParseNetwork(%s) = nil error, want one naming %s", tt.json, tt.field)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, tt.field) || strings.Contains(msg, "\n") {
			t.Errorf("ParseNetwork(%s) error %q: want one line naming %s", tt.json, msg, tt.field)
		}
	}
}

func FuzzParseNetwork(f *testing.F) {
	f.Add([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`))
	f.Add([]byte(`{"EnableIPv6":true,"IPv6Network":"fc00::/48","Network":"10.0.0.0/8","SubnetLen":30}`))
	f.Add([]byte(`{"Network":"10.0.0.0/16","SubnetMin":"10.0.4.0","SubnetMax":"10.0.8.0"}`))
	f.Add([]byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:10::","Backend":{"Type":"host-gw"}}`))
	f.Add([]byte(`{"Network":"10.0.0.0/16","EnableNFTables":true,"Backend":{"Type":"wireguard","PSK":"<&>","MTU":1400}}`))
	f.Add([]byte(`{"Network":"10.0.0.0/16"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := ParseNetwork(data)
		if err != nil {
			// One line an operator can act on.
			if msg := err.Error(); !strings.HasPrefix(msg, "network config: ") || strings.Contains(msg, "\n") {
				t.Fatalf("ParseNetwork(%q) error %q: want one line starting %q", data, msg, "network config: ")
			}
			return
		}
		if !json.Valid(data) {
			t.Fatalf("ParseNetwork accepted %q, which is not JSON", data)
		}
		// Whatever parses must be internally consistent.
		if n.EnableIPv4 {
			if !n.Network.Contains(n.SubnetMin) || !n.Network.Contains(n.SubnetMax) || n.SubnetMax.Less(n.SubnetMin) {
				t.Fatalf("inconsistent v4 range: %+v", n)
			}
			if n.SubnetLen > 30 || n.SubnetLen < n.Network.Bits()+2 {
				t.Fatalf("bad SubnetLen: %+v", n)
			}
		}
		if n.EnableIPv6 {
			if !n.IPv6Network.Contains(n.IPv6SubnetMin) || !n.IPv6Network.Contains(n.IPv6SubnetMax) {
				t.Fatalf("inconsistent v6 range: %+v", n)
			}
		}
		// And written out with every default made explicit, it reads
		// back the same: defaults are fixed points.
		again, err := ParseNetwork(render(t, n))
		if err != nil {
			t.Fatalf("%q parsed to %+v, whose rendering %s does not parse: %v", data, n, render(t, n), err)
		}
		if !sameJSON(n.Backend.Raw, again.Backend.Raw) {
			t.Fatalf("Backend.Raw %s became %s", n.Backend.Raw, again.Backend.Raw)
		}
		again.Backend.Raw = n.Backend.Raw
		if !reflect.DeepEqual(n, again) {
			t.Fatalf("%q: %+v, rendered %s, parsed back as %+v", data, n, render(t, n), again)
		}
	})
}

// render writes n as a network config document.
func render(t *testing.T, n *Network) []byte {
	m := map[string]any{"EnableIPv4": n.EnableIPv4, "EnableIPv6": n.EnableIPv6}
	if n.EnableNFTables != nil {
		m["EnableNFTables"] = *n.EnableNFTables
	}
	if n.EnableIPv4 {
		m["Network"], m["SubnetLen"], m["SubnetMin"], m["SubnetMax"] = n.Network.String(), n.SubnetLen, n.SubnetMin.String(), n.SubnetMax.String()
	}
	if n.EnableIPv6 {
		m["IPv6Network"], m["IPv6SubnetLen"], m["IPv6SubnetMin"], m["IPv6SubnetMax"] = n.IPv6Network.String(), n.IPv6SubnetLen, n.IPv6SubnetMin.String(), n.IPv6SubnetMax.String()
	}
	if n.Backend.Raw != nil {
		m["Backend"] = n.Backend.Raw
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatalf("render %+v: %v", n, err)
	}
	return b
}

// sameJSON reports whether a and b are the same JSON value.
func sameJSON(a, b json.RawMessage) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	var va, vb any
	return json.Unmarshal(a, &va) == nil && json.Unmarshal(b, &vb) == nil && reflect.DeepEqual(va, vb)
}

func mp(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ma(s string) netip.Addr   { return netip.MustParseAddr(s) }
func ptr[T any](v T) *T        { return &v }
