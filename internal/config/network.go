// Package config turns flanneld's command line, its FLANNELD_* environment
// variables and the network configuration JSON (the etcd key
// <prefix>/config, or net-conf.json in Kubernetes mode) into plain structs.
//
// Every error names the offending flag or field, so an operator can fix a
// bad config from one log line; defaults and validation follow upstream
// flannel so that existing configs keep their meaning.
package config

import (
	"encoding/json"
	"fmt"
	"net/netip"
)

// Backend types understood by the daemon.
const (
	BackendVXLAN     = "vxlan"
	BackendHostGW    = "host-gw"
	BackendWireGuard = "wireguard"
	BackendAlloc     = "alloc"
	BackendExtension = "extension"
	BackendIPIP      = "ipip"
	BackendUDP       = "udp"
)

// Network is the cluster-wide network configuration, validated and with
// upstream's defaults filled in.
type Network struct {
	EnableIPv4 bool
	EnableIPv6 bool
	// EnableNFTables is nil when the config does not say; the masquerade code
	// then picks a mode from what the host has.
	EnableNFTables *bool

	Network   netip.Prefix
	SubnetLen int
	SubnetMin netip.Addr
	SubnetMax netip.Addr

	IPv6Network   netip.Prefix
	IPv6SubnetLen int
	IPv6SubnetMin netip.Addr
	IPv6SubnetMax netip.Addr

	Backend Backend
}

// Backend is the "Backend" object of the network config.
type Backend struct {
	Type string
	// Raw is the whole Backend object as given: a backend with options of
	// its own (wireguard) parses them from it, naming its fields
	// "Backend.<name>" in errors.
	Raw json.RawMessage
	// VXLAN options; ignored by host-gw.
	VNI           uint32
	Port          uint16
	GBP           bool
	Learning      bool
	DirectRouting bool
	MTU           int
}

// rawNetwork mirrors the JSON so that each field can be validated on its own
// and named in the error. encoding/json matches keys case-insensitively,
// as upstream does.
type rawNetwork struct {
	EnableIPv4     *bool
	EnableIPv6     bool
	EnableNFTables *bool
	Network        string
	SubnetLen      int
	SubnetMin      string
	SubnetMax      string
	IPv6Network    string
	IPv6SubnetLen  int
	IPv6SubnetMin  string
	IPv6SubnetMax  string
	Backend        json.RawMessage
}

type rawBackend struct {
	Type          string
	VNI           *int64
	Port          int64
	GBP           bool
	Learning      bool
	DirectRouting bool
	MTU           int
}

// FieldError is a config error that names the field it is about.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// ParseNetwork decodes and validates a network config document.
func ParseNetwork(data []byte) (*Network, error) {
	var raw rawNetwork
	// Unmarshal, not a Decoder: a document with anything after its
	// object ("{…}}", a second object) is refused, as upstream refuses it.
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("network config: %s", jsonReason(err))
	}
	n := &Network{
		EnableIPv4:     raw.EnableIPv4 == nil || *raw.EnableIPv4,
		EnableIPv6:     raw.EnableIPv6,
		EnableNFTables: raw.EnableNFTables,
	}
	if !n.EnableIPv4 && !n.EnableIPv6 {
		return nil, wrapNet(fieldErr("EnableIPv4", "both EnableIPv4 and EnableIPv6 are false: nothing to do"))
	}
	if n.EnableIPv4 {
		f, err := parseFamily(familyFields{
			net: "Network", len: "SubnetLen", min: "SubnetMin", max: "SubnetMax",
			bits: 32, maxLen: 30, defaultLen: 24, defaultCut: 22,
		}, raw.Network, raw.SubnetLen, raw.SubnetMin, raw.SubnetMax)
		if err != nil {
			return nil, wrapNet(err)
		}
		n.Network, n.SubnetLen, n.SubnetMin, n.SubnetMax = f.net, f.len, f.min, f.max
	}
	if n.EnableIPv6 {
		f, err := parseFamily(familyFields{
			net: "IPv6Network", len: "IPv6SubnetLen", min: "IPv6SubnetMin", max: "IPv6SubnetMax",
			bits: 128, maxLen: 126, defaultLen: 64, defaultCut: 62,
		}, raw.IPv6Network, raw.IPv6SubnetLen, raw.IPv6SubnetMin, raw.IPv6SubnetMax)
		if err != nil {
			return nil, wrapNet(err)
		}
		n.IPv6Network, n.IPv6SubnetLen, n.IPv6SubnetMin, n.IPv6SubnetMax = f.net, f.len, f.min, f.max
	}
	b, err := parseBackend(raw.Backend, n.EnableIPv4, n.EnableIPv6)
	if err != nil {
		return nil, wrapNet(err)
	}
	n.Backend = b
	return n, nil
}

func wrapNet(err error) error { return fmt.Errorf("network config: %w", err) }

func jsonReason(err error) string {
	var te *json.UnmarshalTypeError
	if ok := asTypeError(err, &te); ok && te.Field != "" {
		return fmt.Sprintf("%s: wrong type: got JSON %s, want %s", te.Field, te.Value, te.Type)
	}
	return "invalid JSON: " + err.Error()
}

func asTypeError(err error, target **json.UnmarshalTypeError) bool {
	te, ok := err.(*json.UnmarshalTypeError)
	if ok {
		*target = te
	}
	return ok
}

type familyFields struct {
	net, len, min, max string
	bits, maxLen       int
	defaultLen         int // SubnetLen when the network is at most defaultCut long
	defaultCut         int
}

type family struct {
	net      netip.Prefix
	len      int
	min, max netip.Addr
}

func parseFamily(ff familyFields, network string, subnetLen int, minS, maxS string) (family, error) {
	var f family
	if network == "" {
		return f, fieldErr(ff.net, "missing: set it to the cluster's pod network, e.g. %q", example(ff.bits))
	}
	p, err := netip.ParsePrefix(network)
	if err != nil {
		return f, fieldErr(ff.net, "%q is not a CIDR prefix", network)
	}
	if p.Addr().BitLen() != ff.bits || p.Addr().Is4In6() {
		return f, fieldErr(ff.net, "%q is not an IPv%d prefix", network, map[int]int{32: 4, 128: 6}[ff.bits])
	}
	p = p.Masked()
	f.net = p
	switch {
	case subnetLen < 0:
		return f, fieldErr(ff.len, "must not be negative, got %d", subnetLen)
	case subnetLen > 0:
		if subnetLen > ff.maxLen {
			return f, fieldErr(ff.len, "must be at most %d, got %d", ff.maxLen, subnetLen)
		}
		if subnetLen < p.Bits()+2 {
			return f, fieldErr(ff.len, "/%d leaves fewer than four subnets in %s", subnetLen, p)
		}
		f.len = subnetLen
	default:
		switch {
		case p.Bits() > ff.maxLen-2:
			return f, fieldErr(ff.net, "%s is too small: the shortest useful prefix is /%d", p, ff.maxLen-2)
		case p.Bits() <= ff.defaultCut:
			f.len = ff.defaultLen
		default:
			f.len = p.Bits() + 2
		}
	}
	first := p.Addr()
	f.min = nextSubnet(first, f.len) // upstream skips the network's first subnet by default
	f.max = lastSubnet(p, f.len)
	if minS != "" {
		a, err := parseAddrIn(ff.min, minS, p, f.len)
		if err != nil {
			return f, err
		}
		f.min = a
	}
	if maxS != "" {
		a, err := parseAddrIn(ff.max, maxS, p, f.len)
		if err != nil {
			return f, err
		}
		f.max = a
	}
	if f.max.Less(f.min) {
		return f, fieldErr(ff.max, "%s is below %s %s", f.max, ff.min, f.min)
	}
	return f, nil
}

func example(bits int) string {
	if bits == 32 {
		return "10.244.0.0/16"
	}
	return "fd00:10:244::/56"
}

func parseAddrIn(field, s string, network netip.Prefix, subnetLen int) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return a, fieldErr(field, "%q is not an IP address", s)
	}
	if !network.Contains(a) {
		return a, fieldErr(field, "%s is not in the network %s", a, network)
	}
	if netip.PrefixFrom(a, subnetLen).Masked().Addr() != a {
		return a, fieldErr(field, "%s is not on a /%d subnet boundary", a, subnetLen)
	}
	return a, nil
}

// nextSubnet returns the start of the /subnetLen block after the one holding a.
func nextSubnet(a netip.Addr, subnetLen int) netip.Addr {
	return addPow2(a, a.BitLen()-subnetLen)
}

// lastSubnet returns the start of the last /subnetLen block of p.
func lastSubnet(p netip.Prefix, subnetLen int) netip.Addr {
	b := p.Addr().As16()
	// Set every host bit of p, then clear the bits below subnetLen.
	off := 128 - p.Addr().BitLen()
	for i := p.Bits(); i < subnetLen; i++ {
		bit := off + i
		b[bit/8] |= 0x80 >> (bit % 8)
	}
	a := netip.AddrFrom16(b)
	if p.Addr().Is4() {
		a = a.Unmap()
	}
	return a
}

// addPow2 adds 2^shift to a, wrapping silently (callers stay inside a prefix).
func addPow2(a netip.Addr, shift int) netip.Addr {
	b := a.As16()
	off := 128 - a.BitLen()
	bit := off + (a.BitLen() - 1 - shift) // index of the bit worth 2^shift
	for i := bit / 8; i >= 0; i-- {
		var add byte
		if i == bit/8 {
			add = 0x80 >> (bit % 8)
		} else {
			add = 1
		}
		s := uint16(b[i]) + uint16(add)
		b[i] = byte(s)
		if s < 256 {
			break
		}
	}
	r := netip.AddrFrom16(b)
	if a.Is4() {
		r = r.Unmap()
	}
	return r
}

func parseBackend(data json.RawMessage, v4, v6 bool) (Backend, error) {
	b := Backend{Type: BackendVXLAN, VNI: 1}
	if len(data) == 0 || string(data) == "null" {
		// Upstream's docs say a missing Backend means vxlan (its code says udp,
		// which it no longer ships).
		return b, nil
	}
	var rb rawBackend
	if err := json.Unmarshal(data, &rb); err != nil {
		var te *json.UnmarshalTypeError
		if asTypeError(err, &te) && te.Field != "" {
			return b, fieldErr("Backend."+te.Field, "wrong type: got JSON %s, want %s", te.Value, te.Type)
		}
		return b, fieldErr("Backend", "invalid JSON: %v", err)
	}
	b.Raw = data
	// Whether a type is supported is the daemon's to say: the backends
	// are listed in one place, internal/backend/backends.
	b.Type = rb.Type
	if b.Type == "" {
		b.Type = BackendVXLAN
	}
	if rb.VNI != nil {
		if *rb.VNI < 0 || *rb.VNI > 1<<24-1 {
			return b, fieldErr("Backend.VNI", "must be between 0 and 16777215, got %d", *rb.VNI)
		}
		b.VNI = uint32(*rb.VNI)
	}
	if rb.Port < 0 || rb.Port > 65535 {
		return b, fieldErr("Backend.Port", "must be between 0 and 65535, got %d", rb.Port)
	}
	b.Port = uint16(rb.Port)
	if b.Type == BackendVXLAN {
		if err := checkVXLANMTU(rb.MTU, b.VNI, v4, v6); err != nil {
			return b, err
		}
		b.MTU = rb.MTU
	} // host-gw ignores MTU, as upstream does: routes carry packets as they
	// are; wireguard parses its own options, MTU among them, from Raw.
	b.GBP, b.Learning, b.DirectRouting = rb.GBP, rb.Learning, rb.DirectRouting
	return b, nil
}

// VXLAN outer-header allowances per underlay family: a VXLAN device's MTU
// is Backend.MTU (or the underlay interface's) less these. See
// internal/backend/vxlan for why IPv6 is 70 where upstream says 50.
const (
	VXLANOverheadIPv4 = 50
	VXLANOverheadIPv6 = 70
)

// checkVXLANMTU validates Backend.MTU, the underlay MTU the VXLAN devices
// are carved from (0: the interface's): what is left for each device in
// use must reach its family's minimum, 68 for IPv4 and 1280 for IPv6.
func checkVXLANMTU(mtu int, vni uint32, v4, v6 bool) error {
	switch {
	case mtu == 0:
		return nil
	case mtu < 0:
		return fieldErr("Backend.MTU", "must not be negative, got %d", mtu)
	case mtu > 65535:
		return fieldErr("Backend.MTU", "must be at most 65535, got %d", mtu)
	case v4 && mtu-VXLANOverheadIPv4 < 68:
		return fieldErr("Backend.MTU", "%d leaves %d for flannel.%d, below IPv4's minimum 68", mtu, mtu-VXLANOverheadIPv4, vni)
	case v6 && mtu-VXLANOverheadIPv6 < 1280:
		return fieldErr("Backend.MTU", "%d leaves %d for flannel-v6.%d, below IPv6's minimum 1280", mtu, mtu-VXLANOverheadIPv6, vni)
	}
	return nil
}
