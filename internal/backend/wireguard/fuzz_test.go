package wireguard

import (
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
)

// pskLike finds what could be a key in a document: runs of base64.
var pskLike = regexp.MustCompile(`[A-Za-z0-9+/=]{12,}`)

// FuzzParseOptions: every refusal is a FieldError naming Backend.<field>
// that never repeats a would-be preshared key; what is accepted is
// consistent (ports set, a known mode that the families allow, two ports
// for two devices) and survives being written out and read again.
func FuzzParseOptions(f *testing.F) {
	f.Add([]byte(`{"Type":"wireguard"}`), true, false)
	f.Add([]byte(`{"Type":"wireguard","ListenPort":51830,"ListenPortV6":51831,"PSK":"YZMNJ4+0E1bKGTFVzDiXv5p3YmHNP/C0IS8YFMZwRG4=","PersistentKeepaliveInterval":25,"Mode":"auto","MTU":1400}`), true, true)
	f.Add([]byte(`{"PSK":"c2VjcmV0LXNlY3JldC1zZWNyZXQ="}`), true, true)
	f.Add([]byte(`{"Mode":"ipv6"}`), true, false)
	f.Add([]byte(`{"ListenPort":51820,"ListenPortV6":51820}`), true, true)
	f.Fuzz(func(t *testing.T, raw []byte, v4, v6 bool) {
		o, err := ParseOptions(raw, v4, v6)
		if err != nil {
			var fe *config.FieldError
			if !errors.As(err, &fe) || !strings.HasPrefix(fe.Field, "Backend") {
				t.Fatalf("ParseOptions(%q) = %v, not a FieldError naming Backend.*", raw, err)
			}
			var r struct{ PSK any }
			if json.Unmarshal(raw, &r) == nil {
				if s, ok := r.PSK.(string); ok {
					for _, secret := range pskLike.FindAllString(s, -1) {
						if strings.Contains(err.Error(), secret) {
							t.Fatalf("error %q repeats the PSK %q", err, s)
						}
					}
				}
			}
			return
		}
		switch {
		case o.ListenPort == 0 || o.ListenPortV6 == 0:
			t.Fatalf("%q: a zero port: %+v", raw, o)
		case o.Mode != ModeSeparate && o.Mode != ModeAuto && o.Mode != ModeIPv4 && o.Mode != ModeIPv6:
			t.Fatalf("%q: mode %q", raw, o.Mode)
		case o.Mode == ModeIPv4 && !v4, o.Mode == ModeIPv6 && !v6:
			t.Fatalf("%q: mode %q with families v4=%v v6=%v", raw, o.Mode, v4, v6)
		case o.Mode == ModeSeparate && v4 && v6 && o.ListenPort == o.ListenPortV6:
			t.Fatalf("%q: two devices on one port %d", raw, o.ListenPort)
		case o.MTU < 0 || o.MTU > 65535:
			t.Fatalf("%q: MTU %d", raw, o.MTU)
		}
		m := map[string]any{"ListenPort": o.ListenPort, "ListenPortV6": o.ListenPortV6,
			"PersistentKeepaliveInterval": o.Keepalive, "Mode": o.Mode, "MTU": o.MTU}
		if o.PSK != (dataplane.WGKey{}) {
			m["PSK"] = o.PSK.String()
		}
		out, _ := json.Marshal(m)
		if again, err := ParseOptions(out, v4, v6); err != nil || again != o {
			t.Fatalf("%q parsed to %+v; written as %s it reads %+v, %v", raw, o, out, again, err)
		}
	})
}

// FuzzParseKeyFile: a key file is accepted only if it holds a non-zero
// key, which reads back from its own rendering; a refusal never repeats
// the file, which holds a secret.
func FuzzParseKeyFile(f *testing.F) {
	f.Add([]byte("YZMNJ4+0E1bKGTFVzDiXv5p3YmHNP/C0IS8YFMZwRG4=\n"))
	f.Add([]byte("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="))
	f.Add([]byte("not a key at all, but long enough"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := parseKeyFile("/k", data)
		if err != nil {
			if s := strings.TrimSpace(string(data)); len(s) >= 8 && strings.Contains(err.Error(), s) {
				t.Fatalf("error %q repeats the file", err)
			}
			return
		}
		if k == (dataplane.WGKey{}) {
			t.Fatalf("%q: the zero key accepted", data)
		}
		if back, err := parseKeyFile("/k", []byte(k.String())); err != nil || back != k {
			t.Fatalf("%q: key %s reads back as %s, %v", data, k, back, err)
		}
	})
}
