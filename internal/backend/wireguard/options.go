package wireguard

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Mode says how many devices carry the two families and, with one, which
// family of a peer's public addresses the tunnel is sent to.
type Mode string

// Modes, as upstream spells them in Backend.Mode.
const (
	// ModeSeparate: one device per family (flannel-wg over IPv4,
	// flannel-wg-v6 over IPv6). The default.
	ModeSeparate Mode = "separate"
	// ModeAuto: one device for both families; per peer, the tunnel goes to
	// whichever of its public addresses is likelier to be reachable.
	ModeAuto Mode = "auto"
	// ModeIPv4 and ModeIPv6: one device for both families; the tunnel goes
	// to the peer's public address of that family.
	ModeIPv4 Mode = "ipv4"
	ModeIPv6 Mode = "ipv6"
)

// Defaults, as upstream's.
const (
	DefaultListenPort   = 51820
	DefaultListenPortV6 = 51821
)

// Overhead is what WireGuard adds to a packet, taken from the underlay
// MTU for the device MTU: a 40-byte outer IPv6 header (20 for IPv4, which
// leaves 20 unused; upstream uses 80 for both families, and so do we so
// that one device MTU fits either underlay), 8 UDP, and 32 of WireGuard's
// own: type, receiver index, counter and the 16-byte authentication tag.
const Overhead = 80

// Options are the wireguard settings of the network config's Backend
// object, validated and with defaults filled in.
type Options struct {
	ListenPort   uint16
	ListenPortV6 uint16
	// PSK is the preshared key; zero: none.
	PSK dataplane.WGKey
	// Keepalive is the persistent keepalive interval in seconds; 0: off.
	Keepalive uint16
	Mode      Mode
	// MTU is the underlay MTU the devices are carved from; 0: the
	// underlay interface's.
	MTU int
}

// rawOptions mirrors the Backend object's JSON. Pointers tell a field set
// to a bad value (0) from one left out; encoding/json matches names
// case-insensitively, as upstream's decoding does.
type rawOptions struct {
	ListenPort   *int64
	ListenPortV6 *int64
	PSK          *string
	// Upstream decodes it into a time.Duration and multiplies by a second:
	// a JSON integer of seconds.
	PersistentKeepaliveInterval *int64
	Mode                        *string
	MTU                         *int64
}

// ParseOptions reads the wireguard options from the whole Backend object
// (config.Backend.Raw; empty means all defaults). v4 and v6 are the
// network's enabled families, which decide the MTU floor and which modes
// make sense. Every error is a *config.FieldError naming "Backend.<Field>".
func ParseOptions(raw json.RawMessage, v4, v6 bool) (Options, error) {
	o := Options{ListenPort: DefaultListenPort, ListenPortV6: DefaultListenPortV6, Mode: ModeSeparate}
	var r rawOptions
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &r); err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) && te.Field != "" {
				return o, fieldErr(te.Field, "wrong type: got JSON %s, want %s", te.Value, jsonType(te.Type))
			}
			return o, fieldErr("", "invalid JSON: %v", err)
		}
	}
	var err error
	if o.ListenPort, err = port("ListenPort", r.ListenPort, DefaultListenPort); err != nil {
		return o, err
	}
	if o.ListenPortV6, err = port("ListenPortV6", r.ListenPortV6, DefaultListenPortV6); err != nil {
		return o, err
	}
	if r.PSK != nil && *r.PSK != "" {
		k, err := wgtypes.ParseKey(*r.PSK)
		if err != nil {
			// The PSK is a secret: the error names it, never shows it.
			return o, fieldErr("PSK", "not a base64 WireGuard key (make one with `wg genpsk`)")
		}
		o.PSK = k
	}
	if k := r.PersistentKeepaliveInterval; k != nil {
		if *k < 0 || *k > 65535 {
			return o, fieldErr("PersistentKeepaliveInterval", "must be between 0 and 65535 seconds, got %d", *k)
		}
		o.Keepalive = uint16(*k)
	}
	if r.Mode != nil && *r.Mode != "" {
		switch m := Mode(*r.Mode); m {
		case ModeSeparate, ModeAuto, ModeIPv4, ModeIPv6:
			o.Mode = m
		default:
			return o, fieldErr("Mode", "%q is not one of separate, auto, ipv4, ipv6", *r.Mode)
		}
	}
	// A single device sending to peers' addresses of a family the network
	// does not enable would find none: we and upstream publish a public
	// address only for enabled families. Upstream starts and installs no
	// working peer; we say so.
	switch {
	case o.Mode == ModeIPv4 && !v4:
		return o, fieldErr("Mode", `"ipv4" sends to peers' IPv4 addresses, but EnableIPv4 is false`)
	case o.Mode == ModeIPv6 && !v6:
		return o, fieldErr("Mode", `"ipv6" sends to peers' IPv6 addresses, but EnableIPv6 is false`)
	}
	// Two devices cannot listen on one UDP port (each binds it for both
	// families).
	if o.Mode == ModeSeparate && v4 && v6 && o.ListenPort == o.ListenPortV6 {
		return o, fieldErr("ListenPortV6", "%d is also ListenPort: the separate mode's two devices need two ports", o.ListenPortV6)
	}
	if m := r.MTU; m != nil {
		if err := checkMTU(*m, v4, v6); err != nil {
			return o, err
		}
		o.MTU = int(*m)
	}
	return o, nil
}

func port(field string, v *int64, def uint16) (uint16, error) {
	if v == nil {
		return def, nil
	}
	if *v < 1 || *v > 65535 {
		return 0, fieldErr(field, "must be between 1 and 65535, got %d", *v)
	}
	return uint16(*v), nil
}

// checkMTU validates a configured underlay MTU: 0 is unset (the
// interface's MTU, as with vxlan; upstream would subtract 80 from 0), and
// what is left for the device must carry every enabled family.
func checkMTU(mtu int64, v4, v6 bool) error {
	switch {
	case mtu == 0:
		return nil
	case mtu < 0:
		return fieldErr("MTU", "must not be negative, got %d", mtu)
	case mtu > 65535:
		return fieldErr("MTU", "must be at most 65535, got %d", mtu)
	case v4 && mtu-Overhead < minMTU4:
		return fieldErr("MTU", "%d leaves %d for the WireGuard device, below IPv4's minimum %d", mtu, mtu-Overhead, minMTU4)
	case v6 && mtu-Overhead < minMTU6:
		return fieldErr("MTU", "%d leaves %d for the WireGuard device, below IPv6's minimum %d", mtu, mtu-Overhead, minMTU6)
	}
	return nil
}

// The smallest MTU each family allows on a link (RFC 791, RFC 8200).
const (
	minMTU4 = 68
	minMTU6 = 1280
)

// checkUnderlayMTU is checkMTU for the interface's own MTU, used when
// Backend.MTU is unset: not a config error but the host's.
func checkUnderlayMTU(iface string, mtu int, v4, v6 bool) error {
	floor, family := 0, ""
	switch {
	case v6 && mtu-Overhead < minMTU6:
		floor, family = minMTU6, "IPv6"
	case v4 && mtu-Overhead < minMTU4:
		floor, family = minMTU4, "IPv4"
	default:
		return nil
	}
	return fmt.Errorf("interface %s: MTU %d leaves %d for the WireGuard device, below %s's minimum %d; set a larger MTU on %s or Backend.MTU",
		iface, mtu, mtu-Overhead, family, floor, iface)
}

func fieldErr(field, format string, args ...any) error {
	name := "Backend"
	if field != "" {
		name += "." + field
	}
	return &config.FieldError{Field: name, Reason: fmt.Sprintf(format, args...)}
}

// jsonType names the JSON type a field accepts.
func jsonType(t reflect.Type) string {
	if t.Kind() == reflect.String {
		return "string"
	}
	return "integer"
}
