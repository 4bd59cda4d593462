package dataplane

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// LinkKind says what kind of device a Link is.
type LinkKind uint8

const (
	// KindVXLAN is a VXLAN device (the zero value: flannel.N, flannel-v6.N).
	KindVXLAN LinkKind = iota
	// KindWireGuard is a WireGuard device (flannel-wg, flannel-wg-v6): a
	// kernel one where the kernel has the module, else a userspace one
	// served by this process (see WireGuardDevices). Its identity is the
	// kind alone; MTU, address, up state, private key and listen port
	// (Link.Port) are fixed in place, so a restart reuses the device and
	// its peers' sessions.
	KindWireGuard
	// KindIPIP is an IPv4-in-IPv4 tunnel device (flannel.ipip) with a
	// fixed local address and any remote: each route through it names its
	// peer as an on-link gateway, which is the tunnel's destination. Its
	// identity is the local address; MTU, address and up state are fixed
	// in place.
	KindIPIP
	// KindUDP is the udp backend's TUN device (flannel0), served by a
	// forwarder in this process (see udp.go).
	KindUDP
)

func (k LinkKind) String() string {
	switch k {
	case KindWireGuard:
		return "wireguard"
	case KindIPIP:
		return "ipip"
	case KindUDP:
		return "udp"
	}
	return "vxlan"
}

// WGKey is a Curve25519 key (private, public or preshared), as
// WireGuard's tools print it: base64.
type WGKey = wgtypes.Key

// WGPeer is one WireGuard peer of one of our WireGuard devices: traffic
// to AllowedIPs is encrypted to PublicKey and sent to Endpoint.
type WGPeer struct {
	Dev       string
	PublicKey WGKey
	// Endpoint is the peer's public address and listen port.
	Endpoint netip.AddrPort
	// AllowedIPs are the peer's subnets: the first, and a second for a
	// dual-stack peer on a single device; an invalid entry is unused. An
	// array keeps WGPeer comparable, as the diff needs.
	AllowedIPs [2]netip.Prefix
	// PSK is the preshared key; zero means none.
	PSK WGKey
	// Keepalive is the persistent keepalive interval in seconds; 0: off.
	Keepalive uint16
}

// WGPeerKey identifies a WireGuard peer: a device holds one peer per
// public key.
type WGPeerKey struct {
	Dev       string
	PublicKey WGKey
}

// Key returns p's identity.
func (p WGPeer) Key() WGPeerKey { return WGPeerKey{p.Dev, p.PublicKey} }

// Allowed returns p's valid AllowedIPs.
func (p WGPeer) Allowed() []netip.Prefix {
	var out []netip.Prefix
	for _, a := range p.AllowedIPs {
		if a.IsValid() {
			out = append(out, a)
		}
	}
	return out
}

// String renders p as `wg set` arguments, without the preshared key's
// value (a secret). It shows p as WireGuard stores it (normWGPeer), so a
// peer read back compares equal as text.
func (p WGPeer) String() string {
	p = normWGPeer(p)
	var allowed []string
	for _, a := range p.Allowed() {
		allowed = append(allowed, a.String())
	}
	s := fmt.Sprintf("%s peer %s endpoint %s allowed-ips %s", p.Dev, p.PublicKey, p.Endpoint, strings.Join(allowed, ","))
	if p.PSK != (WGKey{}) {
		s += " preshared-key (set)"
	}
	if p.Keepalive != 0 {
		s += fmt.Sprintf(" persistent-keepalive %d", p.Keepalive)
	}
	return s
}

// AddWGPeer inserts p.
func (s *State) AddWGPeer(p WGPeer) { s.WGPeers[p.Key()] = p }

// AddWGPeer appends p.
func (o *Objects) AddWGPeer(p WGPeer) { o.WGPeers = append(o.WGPeers, p) }

func checkWGPeer(k WGPeerKey, p WGPeer) error {
	switch {
	case p.Key() != k:
		return fmt.Errorf("wireguard peer keyed %s/%s is %s/%s", k.Dev, k.PublicKey, p.Dev, p.PublicKey)
	case !p.Endpoint.IsValid() || p.Endpoint.Port() == 0:
		return fmt.Errorf("wireguard peer %s on %s: endpoint %s is not an address and port", p.PublicKey, p.Dev, p.Endpoint)
	case len(p.Allowed()) == 0:
		return fmt.Errorf("wireguard peer %s on %s: no allowed IPs", p.PublicKey, p.Dev)
	}
	return nil
}

// linkLine renders a link for State.Lines. A WireGuard device shows its
// public key, never the private one.
func linkLine(l Link) string {
	var line string
	if l.Kind == KindIPIP {
		line = fmt.Sprintf("link %s ipip local %s mtu %d", l.Name, l.Local, l.MTU)
	} else if l.Kind == KindUDP {
		line = fmt.Sprintf("link %s udp local %s port %d mtu %d", l.Name, l.Local, l.Port, l.MTU)
	} else if l.Kind == KindWireGuard {
		pub := "none"
		if l.PrivateKey != (WGKey{}) {
			pub = l.PrivateKey.PublicKey().String()
		}
		line = fmt.Sprintf("link %s wireguard listen-port %d mtu %d public-key %s", l.Name, l.Port, l.MTU, pub)
	} else {
		// The kernel default port reads back as 0: 8472 and 0 are one device.
		line = fmt.Sprintf("link %s vxlan id %d dstport %d local %s dev#%d mtu %d mac %s", l.Name, l.VNI, normPort(l.Port), l.Local, l.ParentIndex, l.MTU, l.MAC)
		if l.GBP {
			line += " gbp"
		}
		if l.Learning {
			line += " learning"
		}
	}
	if l.Addr.IsValid() {
		line += " addr " + l.Addr.String()
	}
	if l.Addr2.IsValid() {
		line += " addr " + l.Addr2.String()
	}
	return line
}

// normWGPeer returns p as WireGuard stores it, so that a peer read back
// compares equal (==) to the declared one it was written from: allowed IPs
// are a set of masked prefixes (the kernel clears host bits), here in
// address order with duplicates dropped and unused entries last; the
// endpoint's address is unmapped (an IPv4 peer is reported as IPv4).
func normWGPeer(p WGPeer) WGPeer {
	var a []netip.Prefix
	for _, x := range p.Allowed() {
		a = append(a, x.Masked())
	}
	slices.SortFunc(a, comparePrefix)
	a = slices.Compact(a)
	p.AllowedIPs = [2]netip.Prefix{}
	copy(p.AllowedIPs[:], a)
	p.Endpoint = netip.AddrPortFrom(p.Endpoint.Addr().Unmap(), p.Endpoint.Port())
	return p
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// WGDevice is a userspace WireGuard device this process serves (package
// wguser makes them): Close ends it and deletes its netdev, returning once
// that is done; Done is closed when the device has ended, by Close or on
// its own (its netdev was deleted).
type WGDevice interface {
	Close() error
	Done() <-chan struct{}
}

// WireGuard implementations, as WGStatus.Impl reports them and the
// --wireguard-device flag names them (config.WireGuardAuto etc.; auto: the
// kernel's if it has the module, else userspace).
const (
	WGAuto      = "auto"
	WGKernel    = "kernel"
	WGUserspace = "userspace"
)

// WGStatus is what `weft status` and the metrics show of a WireGuard
// device. It never carries a private or preshared key.
type WGStatus struct {
	// Impl is WGKernel or WGUserspace.
	Impl       string
	ListenPort uint16
	// PublicKey is zero while the device has no private key.
	PublicKey WGKey
	Peers     []WGPeerStatus
}

// WGPeerStatus is one peer of a WireGuard device as the device reports it.
type WGPeerStatus struct {
	PublicKey WGKey
	// Endpoint is where the peer was last heard from (or the configured
	// endpoint, before any packet arrived).
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
	// LatestHandshake is zero if no handshake has completed.
	LatestHandshake time.Time
	RxBytes         int64
	TxBytes         int64
}
