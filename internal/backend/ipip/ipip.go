// Package ipip is the ipip backend: IPv4 packets to a peer's subnet are
// wrapped in an outer IPv4 header (protocol 4, 20 bytes) and sent to its
// public address through one tunnel device, flannel.ipip, whose local
// address is our underlay's and whose remote is any: each peer is a route
// "subnet via publicIP dev flannel.ipip onlink". With DirectRouting a
// peer on the underlay's own link gets a plain route over the underlay
// instead, as vxlan's DirectRouting does.
//
// Device name, options, lease (no BackendData) and MTU (underlay − 20) are
// upstream's, so the two mix. ipip carries IPv4 only, as upstream's: a
// network with IPv6 enabled is refused. It needs the kernel's ipip
// module; without it, the device cannot be made and the daemon stops at
// start saying so (dataplane.ErrKernelLacks).
package ipip

import (
	"fmt"
	"net/netip"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

// DeviceName is the tunnel device, as upstream names it.
const DeviceName = "flannel.ipip"

// Overhead is the outer IPv4 header.
const Overhead = 20

// Backend is the ipip planner.
type Backend struct {
	net      *config.Network
	underlay backend.Underlay
}

// New returns an ipip planner; the network must be IPv4-only.
// DirectRouting is the network config's Backend.DirectRouting.
func New(n *config.Network, u backend.Underlay) *Backend {
	return &Backend{net: n, underlay: u}
}

// Factory implements backend.Factory.
func Factory(env backend.Env) (backend.Backend, error) {
	n := env.Network
	if n.EnableIPv6 {
		return nil, &config.FieldError{Field: "EnableIPv6", Reason: "the ipip backend carries IPv4 only (as upstream's); use vxlan, host-gw or wireguard for IPv6"}
	}
	if env.Underlay.MTU-Overhead < 68 {
		return nil, fmt.Errorf("ipip: the MTU %d of %s leaves %d for %s, below IPv4's minimum 68", env.Underlay.MTU, env.Underlay.Name, env.Underlay.MTU-Overhead, DeviceName)
	}
	return New(n, env.Underlay), nil
}

var _ backend.Backend = (*Backend)(nil)

// Type implements backend.Backend.
func (b *Backend) Type() string { return config.BackendIPIP }

// MTU is the underlay's less the outer header, the device's and pods'.
func (b *Backend) MTU() int { return b.underlay.MTU - Overhead }

// Attrs implements backend.Backend: the public address and the type; no
// backend data, as upstream.
func (b *Backend) Attrs() lease.Attrs {
	return lease.Attrs{BackendType: config.BackendIPIP, PublicIP: b.underlay.PublicIP}
}

// Resume implements backend.Backend: nothing to keep.
func (b *Backend) Resume(lease.Lease) lease.Attrs { return b.Attrs() }

// Peer implements backend.Backend: one route to the peer's subnet.
func (b *Backend) Peer(self, p lease.Lease) (dataplane.Objects, error) {
	var o dataplane.Objects
	if err := backend.CheckPeer(b.net, config.BackendIPIP, self, p); err != nil {
		return o, err
	}
	if b.net.Backend.DirectRouting && b.underlay.OnLink(p.Attrs.PublicIP) {
		o.AddRoute(dataplane.Route{Dst: p.Subnet, Gw: p.Attrs.PublicIP, Dev: b.underlay.Name})
		return o, nil
	}
	o.AddRoute(dataplane.Route{Dst: p.Subnet, Gw: p.Attrs.PublicIP, Dev: DeviceName, OnLink: true})
	return o, nil
}

// ProbeAddr implements backend.Backend: the peer's address on its
// flannel.ipip, reached through the tunnel (or, with DirectRouting, over
// the underlay).
func (b *Backend) ProbeAddr(p lease.Lease) netip.Addr { return backend.OverlayAddr(b.net, p) }

// PlanBase implements backend.Backend: the tunnel device, with our
// subnet's network address as a /32 (a source for the host's own traffic
// into the overlay, and no broadcast routes).
func (b *Backend) PlanBase(self lease.Lease) *dataplane.State {
	s := dataplane.NewState()
	l := dataplane.Link{Kind: dataplane.KindIPIP, Name: DeviceName, MTU: b.MTU(), Local: b.underlay.LocalIP}
	if self.Subnet.IsValid() {
		l.Addr = netip.PrefixFrom(self.Subnet.Addr(), 32)
	}
	s.Links[DeviceName] = l
	return s
}
