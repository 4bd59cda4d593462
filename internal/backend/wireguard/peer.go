package wireguard

import (
	"encoding/json"
	"net/netip"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

// family is what a peer lease says about one address family, decoded.
type family struct {
	ok     bool // the family is enabled and the peer has a subnet of it
	v6     bool
	subnet netip.Prefix
	public netip.Addr
	key    dataplane.WGKey
	port   uint16 // as published; 0: ours
}

// Peer implements backend.Backend: the peer's backend data is decoded
// once per family and its WireGuard peer entries planned.
func (b *Backend) Peer(self, p lease.Lease) (dataplane.Objects, error) {
	var o dataplane.Objects
	if err := backend.CheckPeer(b.net, config.BackendWireGuard, self, p); err != nil {
		return o, err
	}
	var f4, f6 family
	var err error
	if b.v4() && p.Subnet.IsValid() {
		if f4, err = b.decode(p, false, p.Subnet, p.Attrs.PublicIP, p.Attrs.BackendData); err != nil {
			return o, err
		}
	}
	if b.v6() && p.IPv6Subnet.IsValid() {
		if f6, err = b.decode(p, true, p.IPv6Subnet, p.Attrs.PublicIPv6, p.Attrs.BackendV6Data); err != nil {
			return o, err
		}
	}
	if b.separate() {
		for _, f := range []family{f4, f6} {
			if f.ok {
				o.AddWGPeer(b.wgPeer(b.dev(f.v6), f.key, b.endpoint(f.public, f.v6, f.port), f.subnet))
			}
		}
		return o, nil
	}
	return b.single(p, f4, f6)
}

// decode checks one family's backend data.
func (b *Backend) decode(p lease.Lease, v6 bool, subnet netip.Prefix, public netip.Addr, raw json.RawMessage) (family, error) {
	field := "BackendData"
	if v6 {
		field = "BackendV6Data"
	}
	d, k, err := decodeData(raw)
	if err != nil {
		return family{}, backend.Skipf(backend.ReasonBackendData, "lease %s: %s: %v", p.Key(), field, err)
	}
	if k == b.pub {
		return family{}, backend.Skipf(backend.ReasonBackendData, "lease %s: %s: PublicKey is our own (a stale lease of this host?)", p.Key(), field)
	}
	return family{ok: true, v6: v6, subnet: subnet, public: public, key: k, port: d.Port}, nil
}

// single plans a peer on the one device of the modes auto, ipv4 and
// ipv6: one WireGuard peer with all its subnets, reached at the address
// the mode chooses.
func (b *Backend) single(p lease.Lease, f4, f6 family) (dataplane.Objects, error) {
	var o dataplane.Objects
	key := f4.key
	if !f4.ok {
		key = f6.key
	} else if f6.ok && f6.key != f4.key {
		// Both devices of a peer read one key file, so a lease with two
		// keys is not one we can reach through a single peer entry.
		return o, backend.Skipf(backend.ReasonBackendData, "lease %s: BackendData and BackendV6Data name different public keys", p.Key())
	}
	v6, ok := b.endpointFamily(p)
	if !ok {
		want := "PublicIP"
		if b.opts.Mode == ModeIPv6 {
			want = "PublicIPv6"
		}
		return o, backend.Skipf(backend.ReasonNoPublicIP, "lease %s has no %s (Mode %s sends to it)", p.Key(), want, b.opts.Mode)
	}
	// The port published for the chosen family; a family without
	// data of its own (the peer has no subnet of it) gets ours.
	public, port := p.Attrs.PublicIP, f4.port
	if v6 {
		public, port = p.Attrs.PublicIPv6, f6.port
	}
	wp := b.wgPeer(Device, key, b.endpoint(public, v6, port), netip.Prefix{})
	i := 0
	for _, f := range []family{f4, f6} {
		if f.ok {
			wp.AllowedIPs[i] = f.subnet
			i++
		}
	}
	o.AddWGPeer(wp)
	return o, nil
}

// endpointFamily says which of the peer's public addresses the single
// device sends to (v6), and whether the peer has it. Only addresses of
// enabled families count: they are the ones hosts publish.
func (b *Backend) endpointFamily(p lease.Lease) (v6, ok bool) {
	has4 := b.v4() && p.Attrs.PublicIP.IsValid()
	has6 := b.v6() && p.Attrs.PublicIPv6.IsValid()
	switch b.opts.Mode {
	case ModeIPv4:
		return false, has4
	case ModeIPv6:
		return true, has6
	}
	return b.autoFamily(p.Attrs.PublicIP, p.Attrs.PublicIPv6, has4, has6), has4 || has6
}

// autoFamily is Mode auto's choice, upstream's rule for the address most
// likely to connect: IPv4 when the peer's is not private (RFC 1918) and
// we have one, since anything with IPv4 likely reaches the internet; else
// IPv6 when neither the peer's nor ours is private (RFC 4193, ULA),
// masquerading IPv6 being rare; else IPv4. Unlike upstream it never
// chooses a family the peer has no address of.
func (b *Backend) autoFamily(pub4, pub6 netip.Addr, has4, has6 bool) (v6 bool) {
	switch {
	case !has6:
		return false
	case !has4:
		return true
	case !pub4.IsPrivate() && b.underlay.PublicIP.IsValid():
		return false
	case !pub6.IsPrivate() && b.underlay.PublicIPv6.IsValid() && !b.underlay.PublicIPv6.IsPrivate():
		return true
	}
	return false
}

// endpoint is the peer's address with its published port, or, for peers
// that publish none, the port we listen on for that family.
func (b *Backend) endpoint(public netip.Addr, v6 bool, port uint16) netip.AddrPort {
	if port == 0 {
		port = b.port(v6)
	}
	return netip.AddrPortFrom(public, port)
}

func (b *Backend) wgPeer(dev string, key dataplane.WGKey, ep netip.AddrPort, allowed netip.Prefix) dataplane.WGPeer {
	return dataplane.WGPeer{
		Dev:        dev,
		PublicKey:  key,
		Endpoint:   ep,
		AllowedIPs: [2]netip.Prefix{allowed},
		PSK:        b.opts.PSK,
		Keepalive:  b.opts.Keepalive,
	}
}
