// Package hostgw plans the host-gw backend: no encapsulation, one route
// per peer, "peerSubnet via peerPublicIP dev <underlay>". It needs every
// host on one L2 segment; a peer that is not on-link is skipped, since a
// route through a non-adjacent gateway would be rejected by the kernel
// (or worse, take a wrong path).
package hostgw

import (
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

var _ backend.Backend = (*Backend)(nil)

// Type implements backend.Backend.
func (b *Backend) Type() string { return config.BackendHostGW }

// MTU is the underlay's: nothing is added to packets.
func (b *Backend) MTU() int { return b.underlay.MTU }

// CheckPeer implements backend.Backend.
func (b *Backend) CheckPeer(self, peer lease.Lease) error {
	if peer.Attrs.BackendType != config.BackendHostGW {
		return backend.Skipf(backend.ReasonBackendType, "lease %s has backend %q, want %q", peer.Key(), peer.Attrs.BackendType, config.BackendHostGW)
	}
	if err := backend.CheckPeerSubnets(b.net, self, peer); err != nil {
		return err
	}
	// host-gw routes through the peer's public address as a gateway, which
	// the kernel accepts only when it is on-link.
	if b.net.EnableIPv4 && peer.Subnet.IsValid() && !b.underlay.OnLink(peer.Attrs.PublicIP) {
		return backend.Skipf(backend.ReasonNotOnLink, "peer %s is not on the underlay's link (host-gw needs one L2 segment)", peer.Attrs.PublicIP)
	}
	if b.net.EnableIPv6 && peer.IPv6Subnet.IsValid() && !b.underlay.OnLink(peer.Attrs.PublicIPv6) {
		return backend.Skipf(backend.ReasonNotOnLink, "peer %s is not on the underlay's link (host-gw needs one L2 segment)", peer.Attrs.PublicIPv6)
	}
	return nil
}

// Plan implements backend.Backend.
func (b *Backend) Plan(self lease.Lease, peers []lease.Lease) *dataplane.State {
	return backend.Compose(b, self, peers)
}

// PlanBase implements backend.Backend: host-gw owns no device.
func (b *Backend) PlanBase(lease.Lease) *dataplane.State { return dataplane.NewState() }

// PlanPeer implements backend.Backend: a route per family via the peer's
// public address.
func (b *Backend) PlanPeer(_, p lease.Lease) dataplane.Objects {
	var o dataplane.Objects
	if b.net.EnableIPv4 && p.Subnet.IsValid() && b.underlay.OnLink(p.Attrs.PublicIP) {
		o.AddRoute(dataplane.Route{Dst: p.Subnet, Gw: p.Attrs.PublicIP, Dev: b.underlay.Name})
	}
	if b.net.EnableIPv6 && p.IPv6Subnet.IsValid() && b.underlay.OnLink(p.Attrs.PublicIPv6) {
		o.AddRoute(dataplane.Route{Dst: p.IPv6Subnet, Gw: p.Attrs.PublicIPv6, Dev: b.underlay.Name})
	}
	return o
}
