package backends

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/lease"
)

func TestIdentity(t *testing.T) {
	for _, tc := range []struct {
		attrs lease.Attrs
		v6    bool
		want  string
	}{
		{lease.Attrs{BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"0e:57:00:00:00:01"}`)}, false, "0e:57:00:00:00:01"},
		{lease.Attrs{BackendType: "vxlan", BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"0e:57:00:00:00:02"}`)}, true, "0e:57:00:00:00:02"},
		{lease.Attrs{BackendType: "wireguard", BackendData: json.RawMessage(`{"PublicKey":"YZMNJ4+0E1bKGTFVzDiXv5p3YmHNP/C0IS8YFMZwRG4=","Port":51820}`)}, false, "YZMNJ4+0E1bKGTFVzDiXv5p3YmHNP/C0IS8YFMZwRG4="},
		{lease.Attrs{BackendType: "wireguard", BackendData: json.RawMessage(`{"PublicKey":"nope"}`)}, false, ""},
		{lease.Attrs{BackendType: "host-gw", BackendData: json.RawMessage(`null`)}, false, ""},
		{lease.Attrs{BackendType: "udp"}, false, ""},
	} {
		if got := Identity(tc.attrs, tc.v6); got != tc.want {
			t.Errorf("Identity(%s %s, v6=%v) = %q, want %q", tc.attrs.BackendType, tc.attrs.BackendData, tc.v6, got, tc.want)
		}
	}
	for typ, e := range All() {
		if e.New == nil {
			t.Errorf("%s: no factory", typ)
		}
	}
}

// TestRefused: a refused type is never also served, and each reason is one
// line that ends by naming a backend weft serves.
func TestRefused(t *testing.T) {
	all := All()
	for typ, why := range Refused() {
		if _, ok := all[typ]; ok {
			t.Errorf("%s is both served and refused", typ)
		}
		if why == "" || strings.ContainsAny(why, "\n\r") {
			t.Errorf("%s: reason %q is not one line", typ, why)
		}
		_, use, ok := strings.Cut(why, "; use ")
		if !ok {
			t.Errorf("%s: reason %q says nothing to use instead", typ, why)
			continue
		}
		first := strings.FieldsFunc(use, func(r rune) bool { return r == ' ' || r == ',' })[0]
		if _, ok := all[first]; !ok {
			t.Errorf("%s: reason recommends %q, which weft does not serve", typ, first)
		}
	}
	if why := Refused()["ipsec"]; !strings.Contains(why, "use wireguard") {
		t.Errorf("ipsec: reason %q does not recommend wireguard", why)
	}
}
