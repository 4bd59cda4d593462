package lease_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/weft-net/weft/internal/lease"
)

func TestKeys(t *testing.T) {
	tests := []struct {
		key    string
		v4, v6 string // "" for an absent family
	}{
		{"10.5.52.0-24", "10.5.52.0/24", ""},
		{"10.5.52.0-24&fc00::-64", "10.5.52.0/24", "fc00::/64"},
		{"0.0.0.0-0&fc00::-64", "", "fc00::/64"},
		{"10.0.0.0-8", "10.0.0.0/8", ""},
		{"192.168.1.4-30", "192.168.1.4/30", ""},
		{"10.244.1.0-24&fd00:10:244:1::-64", "10.244.1.0/24", "fd00:10:244:1::/64"},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			var want4, want6 netip.Prefix
			if tt.v4 != "" {
				want4 = netip.MustParsePrefix(tt.v4)
			}
			if tt.v6 != "" {
				want6 = netip.MustParsePrefix(tt.v6)
			}
			if got := lease.MakeKey(want4, want6); got != tt.key {
				t.Errorf("MakeKey(%v, %v) = %q, want %q", want4, want6, got, tt.key)
			}
			for _, key := range []string{tt.key, "/coreos.com/network/subnets/" + tt.key} {
				v4, v6, err := lease.ParseKey(key)
				if err != nil || v4 != want4 || v6 != want6 {
					t.Errorf("ParseKey(%q) = %v, %v, %v; want %v, %v", key, v4, v6, err, want4, want6)
				}
			}
			l := lease.Lease{Subnet: want4, IPv6Subnet: want6}
			if l.Key() != tt.key || l.ID().String() != tt.key {
				t.Errorf("Lease.Key() = %q, ID().String() = %q; want %q", l.Key(), l.ID(), tt.key)
			}
		})
	}
}

func TestParseKeyRejects(t *testing.T) {
	for _, key := range []string{
		"",
		"garbage",
		"/coreos.com/network/subnets/",
		"10.5.52.0",                   // no length
		"10.5.52.0/24",                // CIDR slash, not upstream's dash
		"10.5.52.1-24",                // not masked
		"fc00::1-64&",                 // not masked, and empty IPv6 part
		"10.5.52.0-024",               // non-canonical length
		"10.5.52.0-+24",               // sign
		"10.5.52.0- 24",               // space
		"10.5.52.0-33",                // too long
		"10.5.52.0--1",                // negative
		"010.5.52.0-24",               // leading zero
		"fc00::-64",                   // IPv6 in the IPv4 part
		"::ffff:10.5.52.0-120",        // IPv4-mapped in the IPv4 part
		"10.5.52.0-24&10.6.0.0-16",    // IPv4 in the IPv6 part
		"10.5.52.0-24&fc00::-129",     // too long
		"10.5.52.0-24&fc00::%eth0-64", // zone
		"10.5.52.0-24&fc00::-64&fc01::-64",
		"0.0.0.0-0", // no subnet at all
		"0.0.0.0-0&",
		"10.5.52.0-24&",
	} {
		v4, v6, err := lease.ParseKey(key)
		if err == nil {
			t.Errorf("ParseKey(%q) = %v, %v; want an error", key, v4, v6)
			continue
		}
		if !errors.Is(err, lease.ErrBadKey) {
			t.Errorf("ParseKey(%q) error %v does not wrap ErrBadKey", key, err)
		}
		if v4.IsValid() || v6.IsValid() {
			t.Errorf("ParseKey(%q) returned subnets %v, %v with its error", key, v4, v6)
		}
	}
}

// upstreamLease is a value written by upstream flanneld's vxlan backend.
const upstreamLease = `{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}`

func TestAttrsUpstreamBytes(t *testing.T) {
	a := lease.Attrs{
		PublicIP:    netip.MustParseAddr("10.0.0.1"),
		BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`),
	}
	got, err := json.Marshal(a)
	if err != nil || string(got) != upstreamLease {
		t.Fatalf("Marshal = %s, %v\nwant %s", got, err, upstreamLease)
	}
	var back lease.Attrs
	if err := json.Unmarshal([]byte(upstreamLease), &back); err != nil {
		t.Fatalf("Unmarshal(upstream): %v", err)
	}
	if !back.Equal(a) {
		t.Errorf("Unmarshal(upstream) = %+v, want %+v", back, a)
	}
}

func TestAttrsRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		a    lease.Attrs
		want string
	}{
		{"empty", lease.Attrs{}, `{"PublicIP":"0.0.0.0","PublicIPv6":null}`},
		{"dual-stack", lease.Attrs{
			PublicIP:      netip.MustParseAddr("10.0.0.1"),
			PublicIPv6:    netip.MustParseAddr("fd00::1"),
			BackendType:   "vxlan",
			BackendData:   json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`),
			BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:fe"}`),
		}, `{"PublicIP":"10.0.0.1","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:fe"}}`},
		{"ipv6-only host-gw", lease.Attrs{
			PublicIPv6:  netip.MustParseAddr("fd00::2"),
			BackendType: "host-gw",
		}, `{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::2","BackendType":"host-gw"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := json.Marshal(tt.a)
			if err != nil || string(got) != tt.want {
				t.Fatalf("Marshal = %s, %v\nwant %s", got, err, tt.want)
			}
			var back lease.Attrs
			if err := json.Unmarshal(got, &back); err != nil || !back.Equal(tt.a) {
				t.Fatalf("Unmarshal(%s) = %+v, %v; want %+v", got, back, err, tt.a)
			}
		})
	}
}

func TestAttrsEqualIgnoresFormatting(t *testing.T) {
	a := lease.Attrs{BackendData: json.RawMessage(`{"VNI":1}`)}
	b := lease.Attrs{BackendData: json.RawMessage("{ \"VNI\": 1 }\n")}
	if !a.Equal(b) {
		t.Errorf("backend data differing only in whitespace compare unequal")
	}
	b.BackendData = json.RawMessage(`{"VNI":2}`)
	if a.Equal(b) {
		t.Errorf("different backend data compare equal")
	}
}

func TestDecode(t *testing.T) {
	l, err := lease.Decode("/coreos.com/network/subnets/10.5.52.0-24&fc00::-64", []byte(upstreamLease))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if l.Subnet != netip.MustParsePrefix("10.5.52.0/24") || l.IPv6Subnet != netip.MustParsePrefix("fc00::/64") ||
		l.Attrs.PublicIP != netip.MustParseAddr("10.0.0.1") || l.Attrs.BackendType != "vxlan" {
		t.Errorf("Decode = %+v", l)
	}
}

func TestDecodeMalformed(t *testing.T) {
	const key = "/coreos.com/network/subnets/10.5.52.0-24"
	for _, value := range []string{
		``,
		`{`,
		`garbage`,
		`[]`,
		`"a string"`,
		`{"PublicIP":42}`,
		`{"PublicIP":"not-an-ip"}`,
		`{"PublicIP":"fd00::1"}`,    // wrong family
		`{"PublicIPv6":"10.0.0.1"}`, // wrong family
		`{"PublicIPv6":"::ffff:10.0.0.1"}`,
		`{"PublicIP":"10.0.0.1","BackendData":{"VNI":}}`,
		`{"PublicIP":"10.0.0.1","PublicIPv6":7}`,
	} {
		l, err := lease.Decode(key, []byte(value))
		if err == nil {
			t.Errorf("Decode(%q) = %+v; want an error", value, l)
			continue
		}
		// The subnets still come back, so the daemon can drop that peer.
		if l.Subnet != netip.MustParsePrefix("10.5.52.0/24") {
			t.Errorf("Decode(%q) subnet = %v, want the key's", value, l.Subnet)
		}
		if !strings.Contains(err.Error(), "10.5.52.0-24") {
			t.Errorf("Decode(%q) error %q does not name the key", value, err)
		}
	}
	if _, err := lease.Decode("/coreos.com/network/subnets/bogus", []byte(upstreamLease)); !errors.Is(err, lease.ErrBadKey) {
		t.Errorf("Decode with a bad key: err = %v, want ErrBadKey", err)
	}
}

func TestIDString(t *testing.T) {
	id := lease.ID{V4: netip.MustParsePrefix("10.1.2.0/24")}
	if id.String() != "10.1.2.0-24" {
		t.Errorf("ID.String() = %q", id)
	}
	if lease.Added.String() != "added" || lease.Removed.String() != "removed" {
		t.Errorf("EventType strings = %q, %q", lease.Added, lease.Removed)
	}
}

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{
		"10.5.52.0-24", "10.5.52.0-24&fc00::-64", "0.0.0.0-0&fc00::-64", "/a/b/10.0.0.0-8",
		"10.5.52.1-24", "fc00::-64", "0.0.0.0-0", "10.0.0.0-24&::ffff:10.0.0.0-120", "1.2.3.4-32&::-0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		v4, v6, err := lease.ParseKey(key)
		if err != nil {
			if v4.IsValid() || v6.IsValid() {
				t.Fatalf("ParseKey(%q) returned subnets with error %v", key, err)
			}
			return
		}
		if v4.IsValid() && (!v4.Addr().Is4() || v4.Masked() != v4) {
			t.Fatalf("ParseKey(%q) v4 = %v", key, v4)
		}
		if v6.IsValid() && (!v6.Addr().Is6() || v6.Masked() != v6) {
			t.Fatalf("ParseKey(%q) v6 = %v", key, v6)
		}
		// parse(format(x)) == x
		formatted := lease.MakeKey(v4, v6)
		b4, b6, err := lease.ParseKey(formatted)
		if err != nil || b4 != v4 || b6 != v6 {
			t.Fatalf("ParseKey(MakeKey(ParseKey(%q))) = ParseKey(%q) = %v, %v, %v; want %v, %v", key, formatted, b4, b6, err, v4, v6)
		}
		if again := lease.MakeKey(b4, b6); again != formatted {
			t.Fatalf("MakeKey is not stable: %q then %q", formatted, again)
		}
	})
}

func FuzzDecode(f *testing.F) {
	f.Add("10.5.52.0-24", []byte(upstreamLease))
	f.Add("10.5.52.0-24&fc00::-64", []byte(`{"PublicIP":"10.0.0.1","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendData":null,"BackendV6Data":{"VNI":1}}`))
	f.Add("0.0.0.0-0&fc00::-64", []byte(`{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::1"}`))
	f.Add("10.5.52.0-24", []byte(`{"PublicIP":`))
	f.Add("bogus", []byte(`{}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		l, err := lease.Decode(key, value)
		if err != nil {
			return
		}
		// encode(decode(x)) decodes to the same lease.
		enc, err := json.Marshal(l.Attrs)
		if err != nil {
			t.Fatalf("Marshal(%+v) from %q: %v", l.Attrs, value, err)
		}
		back, err := lease.Decode(l.Key(), enc)
		if err != nil {
			t.Fatalf("Decode(%q, %s) of re-encoded %q: %v", l.Key(), enc, value, err)
		}
		// The backend data may come back spelled differently (encoding/json
		// escapes <, > and & as \u003c…, as upstream's encoder does), never
		// meaning something else.
		a, b := back.Attrs, l.Attrs
		if back.ID() != l.ID() || a.PublicIP != b.PublicIP || a.PublicIPv6 != b.PublicIPv6 || a.BackendType != b.BackendType ||
			!sameJSON(a.BackendData, b.BackendData) || !sameJSON(a.BackendV6Data, b.BackendV6Data) {
			t.Fatalf("round trip of %q %q: got %+v, want %+v", key, value, back, l)
		}
	})
}

// sameJSON reports whether two JSON texts (empty: absent) mean the same.
func sameJSON(x, y json.RawMessage) bool {
	if len(x) == 0 || len(y) == 0 {
		return len(x) == len(y)
	}
	var a, b any
	if json.Unmarshal(x, &a) != nil || json.Unmarshal(y, &b) != nil {
		return bytes.Equal(x, y)
	}
	return reflect.DeepEqual(a, b)
}

// Junk of any size is refused without its errors repeating it whole.
func TestDecodeBoundsItsInput(t *testing.T) {
	huge := strings.Repeat("9", 1<<20)
	for _, tc := range []struct {
		key   string
		value []byte
		want  error
	}{
		{"10.5.1.0-24", make([]byte, lease.MaxValueSize+1), lease.ErrValueTooLarge},
		{huge, []byte(`{}`), lease.ErrBadKey},
		{"10.5.1.0-24&" + huge, []byte(`{}`), lease.ErrBadKey},
		{"10.5.1.0-24", []byte(`{"PublicIP":"` + huge + `"}`), nil},
	} {
		l, err := lease.Decode(tc.key, tc.value)
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("Decode(%s…, %d bytes) = %v, want %v", lease.Shorten(tc.key), len(tc.value), err, tc.want)
			continue
		}
		if len(err.Error()) > 500 {
			t.Errorf("Decode error is %d bytes long", len(err.Error()))
		}
		if errors.Is(err, lease.ErrValueTooLarge) && l.Subnet != netip.MustParsePrefix("10.5.1.0/24") {
			t.Errorf("too large: subnet %v, want the key's", l.Subnet)
		}
	}
	if s := lease.Shorten("é" + strings.Repeat("é", 200)); !utf8.ValidString(s) || len(s) > 160 {
		t.Errorf("Shorten = %q", s)
	}
	if got := lease.MaxValueSize; got < 4096 {
		t.Errorf("MaxValueSize %d is below what a real lease may need", got)
	}
	exact := make([]byte, lease.MaxValueSize)
	copy(exact, `{"PublicIP":"10.0.0.1"}`)
	for i := len(`{"PublicIP":"10.0.0.1"}`); i < len(exact); i++ {
		exact[i] = ' '
	}
	if _, err := lease.Decode("10.5.1.0-24", exact); err != nil {
		t.Errorf("a value of exactly MaxValueSize: %v", err)
	}
}
