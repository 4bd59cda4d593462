// Package hostgw plans the host-gw backend: no encapsulation, one route
// per peer, "peerSubnet via peerPublicIP dev <underlay>". It needs every
// host on one L2 segment; a peer that is not on-link is skipped, since a
// route through a non-adjacent gateway would be rejected by the kernel
// (or worse, take a wrong path).
package hostgw

import (
	"net/netip"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

// Backend is the host-gw planner.
type Backend struct {
	net      *config.Network
	underlay backend.Underlay
}

// New returns a host-gw planner for the network over underlay.
func New(n *config.Network, u backend.Underlay) *Backend {
	return &Backend{net: n, underlay: u}
}

// Factory implements backend.Factory.
func Factory(env backend.Env) (backend.Backend, error) { return New(env.Network, env.Underlay), nil }

var _ backend.Backend = (*Backend)(nil)

// Type implements backend.Backend.
func (b *Backend) Type() string { return config.BackendHostGW }

// MTU is the underlay's: nothing is added to packets.
func (b *Backend) MTU() int { return b.underlay.MTU }

// Attrs implements backend.Backend: host-gw publishes no backend data.
func (b *Backend) Attrs() lease.Attrs {
	return backend.PublicAttrs(b.net, config.BackendHostGW, b.underlay.PublicIP, b.underlay.PublicIPv6)
}

// Resume implements backend.Backend: nothing to keep.
func (b *Backend) Resume(lease.Lease) lease.Attrs { return b.Attrs() }

// Peer implements backend.Backend: a route per family via the peer's
// public address, which the kernel accepts only when it is on-link.
func (b *Backend) Peer(self, p lease.Lease) (dataplane.Objects, error) {
	var o dataplane.Objects
	if err := backend.CheckPeer(b.net, config.BackendHostGW, self, p); err != nil {
		return o, err
	}
	if b.net.EnableIPv4 && p.Subnet.IsValid() {
		if !b.underlay.OnLink(p.Attrs.PublicIP) {
			return dataplane.Objects{}, backend.Skipf(backend.ReasonNotOnLink, "peer %s is not on the underlay's link (host-gw needs one L2 segment)", p.Attrs.PublicIP)
		}
		o.AddRoute(dataplane.Route{Dst: p.Subnet, Gw: p.Attrs.PublicIP, Dev: b.underlay.Name})
	}
	if b.net.EnableIPv6 && p.IPv6Subnet.IsValid() {
		if !b.underlay.OnLink(p.Attrs.PublicIPv6) {
			return dataplane.Objects{}, backend.Skipf(backend.ReasonNotOnLink, "peer %s is not on the underlay's link (host-gw needs one L2 segment)", p.Attrs.PublicIPv6)
		}
		o.AddRoute(dataplane.Route{Dst: p.IPv6Subnet, Gw: p.Attrs.PublicIPv6, Dev: b.underlay.Name})
	}
	return o, nil
}

// ProbeAddr implements backend.Backend. host-gw puts no address of its
// own anywhere (a peer's subnet has one only on its CNI bridge, once it
// runs a pod), so the probe goes to what our route names as the gateway:
// the peer's public address, on the underlay link the route uses.
func (b *Backend) ProbeAddr(p lease.Lease) netip.Addr {
	if b.net.EnableIPv4 && p.Subnet.IsValid() {
		return p.Attrs.PublicIP
	}
	if b.net.EnableIPv6 && p.IPv6Subnet.IsValid() {
		return p.Attrs.PublicIPv6
	}
	return netip.Addr{}
}

// PlanBase implements backend.Backend: host-gw owns no device.
func (b *Backend) PlanBase(lease.Lease) *dataplane.State { return dataplane.NewState() }
