// Package alloc is the alloc backend: this host leases a subnet and writes
// subnet.env, and nothing else. Traffic between subnets is somebody
// else's business (a cloud route table, a router, a program of the
// operator's), as with upstream's alloc backend.
//
// Its leases carry no BackendType, as upstream's do ({"PublicIP":…}), so
// a host switching from upstream's alloc keeps its lease. Peers are still
// watched and checked (they show in `weft status` and the peer metrics)
// but nothing is installed for them, whatever backend they name.
package alloc

import (
	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
	"net/netip"
)

// Backend is the alloc planner.
type Backend struct {
	net      *config.Network
	underlay backend.Underlay
}

// New returns an alloc planner for the network over underlay.
func New(n *config.Network, u backend.Underlay) *Backend { return &Backend{net: n, underlay: u} }

// Factory implements backend.Factory. alloc takes no options.
func Factory(env backend.Env) (backend.Backend, error) { return New(env.Network, env.Underlay), nil }

var _ backend.Backend = (*Backend)(nil)

// Type implements backend.Backend.
func (b *Backend) Type() string { return config.BackendAlloc }

// MTU is the underlay's: pods' packets leave the host as they are.
func (b *Backend) MTU() int { return b.underlay.MTU }

// Attrs implements backend.Backend: the public addresses and no backend
// type or data, as upstream writes them.
func (b *Backend) Attrs() lease.Attrs {
	return backend.PublicAttrs(b.net, "", b.underlay.PublicIP, b.underlay.PublicIPv6)
}

// Resume implements backend.Backend: nothing to keep.
func (b *Backend) Resume(lease.Lease) lease.Attrs { return b.Attrs() }

// Peer implements backend.Backend: a peer is checked like any other
// backend's (inside the network, not overlapping ours, not our address),
// whatever its backend type, and plans nothing.
func (b *Backend) Peer(self, p lease.Lease) (dataplane.Objects, error) {
	return dataplane.Objects{}, backend.CheckPeerSubnets(b.net, self, p)
}

// PlanBase implements backend.Backend: alloc owns no device.
func (b *Backend) PlanBase(lease.Lease) *dataplane.State { return dataplane.NewState() }

// ProbeAddr implements backend.Backend: alloc has no peers.
func (b *Backend) ProbeAddr(lease.Lease) netip.Addr { return netip.Addr{} }
