package wireguard

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/lease"
)

// TestLeaseEncodeGolden: the lease value we write is byte for byte what
// upstream's flanneld writes for the same host, key and ports.
func TestLeaseEncodeGolden(t *testing.T) {
	for _, tc := range []struct {
		name, net, want string
	}{
		{"v4", `{` + v4Net + `,"Backend":{"Type":"wireguard"}}`,
			`{"PublicIP":"203.0.113.10","PublicIPv6":null,"BackendType":"wireguard",` +
				`"BackendData":{"PublicKey":"` + ourPub + `","Port":51820}}`},
		{"v6", `{` + v6Net + `,"Backend":{"Type":"wireguard"}}`,
			`{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8:1::10","BackendType":"wireguard",` +
				`"BackendV6Data":{"PublicKey":"` + ourPub + `","Port":51821}}`},
		{"dual, separate", `{` + dualNet + `,"Backend":{"Type":"wireguard","ListenPort":1000,"ListenPortV6":2000}}`,
			`{"PublicIP":"203.0.113.10","PublicIPv6":"2001:db8:1::10","BackendType":"wireguard",` +
				`"BackendData":{"PublicKey":"` + ourPub + `","Port":1000},` +
				`"BackendV6Data":{"PublicKey":"` + ourPub + `","Port":2000}}`},
		// One device, one port: published for both families (upstream
		// would say 51821 in BackendV6Data, where nothing listens).
		{"dual, auto", `{` + dualNet + `,"Backend":{"Type":"wireguard","Mode":"auto"}}`,
			`{"PublicIP":"203.0.113.10","PublicIPv6":"2001:db8:1::10","BackendType":"wireguard",` +
				`"BackendData":{"PublicKey":"` + ourPub + `","Port":51820},` +
				`"BackendV6Data":{"PublicKey":"` + ourPub + `","Port":51820}}`},
	} {
		got, err := json.Marshal(newBackend(t, tc.net).Attrs())
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}

// TestLeaseDecodeGolden: lease values as upstream writes them (and as
// older versions and other writers may) plan the peers they should.
func TestLeaseDecodeGolden(t *testing.T) {
	for _, tc := range []struct {
		name, net, key, value string
		want                  []string // the peer's WireGuard peers
	}{
		{"upstream v4", `{` + v4Net + `,"Backend":{"Type":"wireguard"}}`, "10.5.2.0-24",
			`{"PublicIP":"192.168.1.11","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"` + pubA + `","Port":51820}}`,
			[]string{"flannel-wg peer " + pubA + " endpoint 192.168.1.11:51820 allowed-ips 10.5.2.0/24"}},
		{"no Port: our listen port", `{` + v4Net + `,"Backend":{"Type":"wireguard","ListenPort":40000}}`, "10.5.2.0-24",
			`{"PublicIP":"192.168.1.11","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"` + pubA + `"}}`,
			[]string{"flannel-wg peer " + pubA + " endpoint 192.168.1.11:40000 allowed-ips 10.5.2.0/24"}},
		{"unknown fields are ignored", `{` + v4Net + `,"Backend":{"Type":"wireguard"}}`, "10.5.2.0-24",
			`{"PublicIP":"192.168.1.11","PublicIPv6":null,"BackendType":"wireguard","Future":[1,2],` +
				`"BackendData":{"PublicKey":"` + pubA + `","Port":51825,"Endpoint":"x","Extra":{"a":null}}}`,
			[]string{"flannel-wg peer " + pubA + " endpoint 192.168.1.11:51825 allowed-ips 10.5.2.0/24"}},
		{"upstream dual stack, separate", `{` + dualNet + `,"Backend":{"Type":"wireguard"}}`, "10.5.2.0-24&fc00:0:0:2::-64",
			`{"PublicIP":"192.168.1.11","PublicIPv6":"2001:db8:2::11","BackendType":"wireguard",` +
				`"BackendData":{"PublicKey":"` + pubA + `","Port":51820},"BackendV6Data":{"PublicKey":"` + pubA + `","Port":51821}}`,
			[]string{
				"flannel-wg peer " + pubA + " endpoint 192.168.1.11:51820 allowed-ips 10.5.2.0/24",
				"flannel-wg-v6 peer " + pubA + " endpoint [2001:db8:2::11]:51821 allowed-ips fc00:0:0:2::/64",
			}},
		// An upstream host in a single-device mode publishes 51821 for
		// IPv6 although it listens on 51820; we send where it says.
		{"upstream dual stack, ipv6 mode", `{` + dualNet + `,"Backend":{"Type":"wireguard","Mode":"ipv6"}}`, "10.5.2.0-24&fc00:0:0:2::-64",
			`{"PublicIP":"192.168.1.11","PublicIPv6":"2001:db8:2::11","BackendType":"wireguard",` +
				`"BackendData":{"PublicKey":"` + pubA + `","Port":51820},"BackendV6Data":{"PublicKey":"` + pubA + `","Port":51821}}`,
			[]string{"flannel-wg peer " + pubA + " endpoint [2001:db8:2::11]:51821 allowed-ips 10.5.2.0/24,fc00:0:0:2::/64"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t, tc.net)
			p, err := lease.Decode(tc.key, []byte(tc.value))
			if err != nil {
				t.Fatal(err)
			}
			o, err := b.Peer(selfOf(b.net), p)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, wp := range o.WGPeers {
				got = append(got, wp.String())
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestDecodeData(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want Data
		ok   bool
	}{
		{`{"PublicKey":"` + pubA + `","Port":51820}`, Data{PublicKey: pubA, Port: 51820}, true},
		{`{"PublicKey":"` + pubA + `"}`, Data{PublicKey: pubA}, true},
		{`{"publickey":"` + pubA + `","port":1}`, Data{PublicKey: pubA, Port: 1}, true},
		// base64 decoding skips line breaks; the key comes back canonical.
		{`{"PublicKey":"` + pubA[:10] + `\n` + pubA[10:] + `"}`, Data{PublicKey: pubA}, true},
		{``, Data{}, false},
		{`null`, Data{}, false},
		{`{}`, Data{}, false},
		{`{"PublicKey":""}`, Data{}, false},
		{`{"PublicKey":"` + pubA + `","Port":65536}`, Data{}, false},
		{`{"PublicKey":"` + pubA + `","Port":"51820"}`, Data{}, false},
		{`{"PublicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`, Data{}, false},
		{`{"PublicKey":1}`, Data{}, false},
	} {
		got, err := DecodeData([]byte(tc.raw))
		if (err == nil) != tc.ok {
			t.Errorf("DecodeData(%s) error = %v, want ok %v", tc.raw, err, tc.ok)
			continue
		}
		if tc.ok && got != tc.want {
			t.Errorf("DecodeData(%s) = %+v, want %+v", tc.raw, got, tc.want)
		}
	}
	if got := string(EncodeData(mustKey(pubB), 51821)); got != `{"PublicKey":"`+pubB+`","Port":51821}` {
		t.Errorf("EncodeData = %s", got)
	}
}

func FuzzDecodeData(f *testing.F) {
	f.Add([]byte(`{"PublicKey":"` + pubA + `","Port":51820}`))
	f.Add([]byte(`{"PublicKey":"` + pubA + `"}`))
	f.Add([]byte(`{"PublicKey":"` + pubA + `","Port":51825,"Extra":{"a":null}}`))
	f.Add([]byte(`{"PublicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","Port":0}`))
	f.Add([]byte(`{"PublicKey":"` + pubA + `","Port":-1}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		d, err := DecodeData(raw)
		if err != nil {
			return
		}
		// What is accepted re-encodes to what decodes the same.
		k, err := DecodeData(EncodeData(mustKey(d.PublicKey), d.Port))
		if err != nil || k != d {
			t.Fatalf("round trip of %q: %+v, %v; want %+v", raw, k, err, d)
		}
	})
}

// FuzzPeer: any lease value, decoded as the store does, is planned or
// skipped with a reason, never a panic, and what is planned is valid.
func FuzzPeer(f *testing.F) {
	f.Add(`{"PublicIP":"192.168.1.11","PublicIPv6":"2001:db8:2::11","BackendType":"wireguard",` +
		`"BackendData":{"PublicKey":"` + pubA + `","Port":51820},"BackendV6Data":{"PublicKey":"` + pubA + `"}}`)
	f.Add(`{"PublicIP":"192.168.1.11","BackendType":"wireguard","BackendV6Data":{"PublicKey":"` + pubB + `","Port":0}}`)
	bs := []*Backend{
		newBackend(f, `{`+dualNet+`,"Backend":{"Type":"wireguard"}}`),
		newBackend(f, `{`+dualNet+`,"Backend":{"Type":"wireguard","Mode":"auto"}}`),
		newBackend(f, `{`+dualNet+`,"Backend":{"Type":"wireguard","Mode":"ipv6"}}`),
	}
	f.Fuzz(func(t *testing.T, value string) {
		p, err := lease.Decode("10.5.2.0-24&fc00:0:0:2::-64", []byte(value))
		if err != nil {
			return
		}
		for _, b := range bs {
			o, err := b.Peer(selfOf(b.net), p)
			if err != nil {
				if backend.SkipReason(err) == backend.ReasonDecode {
					t.Fatalf("mode %s: %v is not a skip", b.opts.Mode, err)
				}
				continue
			}
			for _, wp := range o.WGPeers {
				if !wp.Endpoint.IsValid() || wp.Endpoint.Port() == 0 || len(wp.Allowed()) == 0 || wp.PublicKey == b.pub {
					t.Fatalf("mode %s: bad peer %s", b.opts.Mode, wp)
				}
			}
		}
	})
}
