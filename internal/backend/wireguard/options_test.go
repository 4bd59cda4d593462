package wireguard

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/weft-net/weft/internal/config"
)

func TestParseOptions(t *testing.T) {
	for _, tc := range []struct {
		name   string
		raw    string
		v4, v6 bool
		want   Options
	}{
		{"empty", ``, true, false, Options{ListenPort: 51820, ListenPortV6: 51821, Mode: ModeSeparate}},
		{"type only", `{"Type":"wireguard"}`, true, true, Options{ListenPort: 51820, ListenPortV6: 51821, Mode: ModeSeparate}},
		{"nulls are unset", `{"ListenPort":null,"PSK":null,"Mode":null,"MTU":null}`, true, false,
			Options{ListenPort: 51820, ListenPortV6: 51821, Mode: ModeSeparate}},
		{"everything", `{"Type":"wireguard","PSK":"` + pskB64 + `","ListenPort":1,"ListenPortV6":65535,` +
			`"PersistentKeepaliveInterval":25,"Mode":"auto","MTU":1400}`, true, true,
			Options{ListenPort: 1, ListenPortV6: 65535, PSK: mustKey(pskB64), Keepalive: 25, Mode: ModeAuto, MTU: 1400}},
		{"keys are case-insensitive", `{"listenport":1000,"LISTENPORTV6":1001,"psk":"` + pskB64 + `",` +
			`"persistentkeepaliveinterval":65535,"mode":"ipv6","mtu":1360}`, false, true,
			Options{ListenPort: 1000, ListenPortV6: 1001, PSK: mustKey(pskB64), Keepalive: 65535, Mode: ModeIPv6, MTU: 1360}},
		{"MTU 0 is unset", `{"MTU":0}`, true, true, Options{ListenPort: 51820, ListenPortV6: 51821, Mode: ModeSeparate}},
		{"smallest IPv4 MTU", `{"MTU":148}`, true, false, Options{ListenPort: 51820, ListenPortV6: 51821, Mode: ModeSeparate, MTU: 148}},
		{"smallest IPv6 MTU", `{"MTU":1360}`, true, true, Options{ListenPort: 51820, ListenPortV6: 51821, Mode: ModeSeparate, MTU: 1360}},
		{"one port is fine for one device", `{"Mode":"auto","ListenPort":5000,"ListenPortV6":5000}`, true, true,
			Options{ListenPort: 5000, ListenPortV6: 5000, Mode: ModeAuto}},
		{"one port is fine for one family", `{"ListenPort":5000,"ListenPortV6":5000}`, true, false,
			Options{ListenPort: 5000, ListenPortV6: 5000, Mode: ModeSeparate}},
		{"empty PSK is none", `{"PSK":""}`, true, false, Options{ListenPort: 51820, ListenPortV6: 51821, Mode: ModeSeparate}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseOptions([]byte(tc.raw), tc.v4, tc.v6)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

// TestParseOptionsErrors: every bad value is a *config.FieldError naming
// the field.
func TestParseOptionsErrors(t *testing.T) {
	const secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQ=" // base64, but 20 bytes
	for _, tc := range []struct {
		raw    string
		v4, v6 bool
		field  string
		reason string // a part of the reason
	}{
		{`{"ListenPort":"51820"}`, true, false, "Backend.ListenPort", "wrong type: got JSON string, want integer"},
		{`{"ListenPort":1.5}`, true, false, "Backend.ListenPort", "wrong type"},
		{`{"ListenPort":1e30}`, true, false, "Backend.ListenPort", "wrong type"},
		{`{"ListenPort":0}`, true, false, "Backend.ListenPort", "between 1 and 65535, got 0"},
		{`{"ListenPort":-1}`, true, false, "Backend.ListenPort", "got -1"},
		{`{"ListenPort":65536}`, true, false, "Backend.ListenPort", "got 65536"},
		{`{"listenPortV6":70000}`, true, true, "Backend.ListenPortV6", "got 70000"},
		{`{"ListenPortV6":true}`, true, true, "Backend.ListenPortV6", "wrong type"},
		{`{"ListenPortV6":0}`, true, false, "Backend.ListenPortV6", "got 0"},
		{`{"ListenPort":7000,"ListenPortV6":7000}`, true, true, "Backend.ListenPortV6", "need two ports"},
		{`{"PSK":5}`, true, false, "Backend.PSK", "wrong type: got JSON number, want string"},
		{`{"PSK":"not a key"}`, true, false, "Backend.PSK", "not a base64 WireGuard key"},
		{`{"PSK":"` + secret + `"}`, true, false, "Backend.PSK", "not a base64 WireGuard key"},
		{`{"PersistentKeepaliveInterval":-1}`, true, false, "Backend.PersistentKeepaliveInterval", "got -1"},
		{`{"PersistentKeepaliveInterval":65536}`, true, false, "Backend.PersistentKeepaliveInterval", "got 65536"},
		{`{"PersistentKeepaliveInterval":"25s"}`, true, false, "Backend.PersistentKeepaliveInterval", "wrong type"},
		{`{"PersistentKeepaliveInterval":2.5}`, true, false, "Backend.PersistentKeepaliveInterval", "wrong type"},
		{`{"Mode":"both"}`, true, false, "Backend.Mode", `"both" is not one of separate, auto, ipv4, ipv6`},
		{`{"Mode":"Auto"}`, true, false, "Backend.Mode", "not one of"},
		{`{"Mode":1}`, true, false, "Backend.Mode", "wrong type"},
		{`{"Mode":"ipv6"}`, true, false, "Backend.Mode", "EnableIPv6 is false"},
		{`{"Mode":"ipv4"}`, false, true, "Backend.Mode", "EnableIPv4 is false"},
		{`{"MTU":-1}`, true, false, "Backend.MTU", "must not be negative"},
		{`{"MTU":65536}`, true, false, "Backend.MTU", "at most 65535"},
		{`{"MTU":147}`, true, false, "Backend.MTU", "147 leaves 67 for the WireGuard device, below IPv4's minimum 68"},
		{`{"MTU":1359}`, true, true, "Backend.MTU", "1359 leaves 1279 for the WireGuard device, below IPv6's minimum 1280"},
		{`{"MTU":1359}`, false, true, "Backend.MTU", "below IPv6's minimum"},
		{`{"MTU":"1400"}`, true, false, "Backend.MTU", "wrong type"},
	} {
		_, err := ParseOptions([]byte(tc.raw), tc.v4, tc.v6)
		var fe *config.FieldError
		if !errors.As(err, &fe) {
			t.Errorf("ParseOptions(%s) = %v, want a *config.FieldError", tc.raw, err)
			continue
		}
		if fe.Field != tc.field || !strings.Contains(fe.Reason, tc.reason) {
			t.Errorf("ParseOptions(%s) = %v, want field %s and a reason with %q", tc.raw, err, tc.field, tc.reason)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("ParseOptions(%s): the error shows the PSK: %v", tc.raw, err)
		}
	}
}
