// Package backend holds what the backends (vxlan, host-gw) share: the
// description of this host's underlay and the peer checks every backend
// applies. A backend is a pure planner: from this host's lease and its
// peers' leases it declares the kernel objects (a dataplane.State), one
// peer at a time (Peer) so that desired.State can keep it up to date
// per lease event; it
// never talks to the kernel itself, so its logic is table-tested without
// root and the dataplane package is the one place that writes.
package backend

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"net/netip"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/desired"
	"github.com/weft-net/weft/internal/lease"
)

// Underlay is the host's interface to other hosts.
type Underlay struct {
	Index int
	Name  string
	MTU   int
	// Prefixes are the interface's global addresses with their on-link
	// prefixes; a peer whose public IP falls in one is on the same L2
	// segment (DirectRouting, host-gw).
	Prefixes []netip.Prefix
	// LocalIP / LocalIPv6 are the interface addresses used as the
	// encapsulation source; PublicIP / PublicIPv6 are what peers are
	// told (they differ behind NAT or with --public-ip).
	LocalIP, LocalIPv6   netip.Addr
	PublicIP, PublicIPv6 netip.Addr
}

// OnLink reports whether ip is directly reachable on the underlay.
func (u Underlay) OnLink(ip netip.Addr) bool {
	for _, p := range u.Prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Skip reasons, also the label values of the skipped-lease metrics.
const (
	// ReasonDecode: the value is not a lease (bad JSON, a public IP that
	// is not an address of its family).
	ReasonDecode = "decode"
	// ReasonBadKey: the store key is not a lease's (lease.ErrBadKey).
	ReasonBadKey = "bad_key"
	// ReasonTooLarge: the value exceeds lease.MaxValueSize.
	ReasonTooLarge     = "value_too_large"
	ReasonBackendType  = "backend_type"
	ReasonBackendData  = "backend_data"
	ReasonOutside      = "outside_network"
	ReasonOverlapSelf  = "overlaps_own_subnet"
	ReasonOverlapPeer  = "overlaps_peer"
	ReasonNoPublicIP   = "no_public_ip"
	ReasonFamilyAbsent = "no_enabled_family"
	ReasonNotOnLink    = "not_on_link"
	// ReasonOwnPublicIP: a lease for other subnets than ours that names
	// our public address (see CheckPeerSubnets).
	ReasonOwnPublicIP = "own_public_ip"
)

// SkipError says why a peer lease is not used; Reason is one of the
// Reason* constants.
type SkipError struct {
	Reason string
	Err    error
}

func (e *SkipError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *SkipError) Unwrap() error { return e.Err }

// Skipf builds a SkipError.
func Skipf(reason, format string, args ...any) error {
	return &SkipError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// SkipReason returns err's reason: a SkipError's, ReasonBadKey or
// ReasonTooLarge for the lease decoder's errors of that kind, else
// ReasonDecode.
func SkipReason(err error) string {
	var se *SkipError
	switch {
	case errors.As(err, &se):
		return se.Reason
	case errors.Is(err, lease.ErrBadKey):
		return ReasonBadKey
	case errors.Is(err, lease.ErrValueTooLarge):
		return ReasonTooLarge
	}
	return ReasonDecode
}

// CheckPeer applies the checks every backend makes on a peer: its lease
// is of backend type typ, and CheckPeerSubnets.
func CheckPeer(n *config.Network, typ string, self, peer lease.Lease) error {
	if peer.Attrs.BackendType != typ {
		return Skipf(ReasonBackendType, "lease %s has backend %q, want %q", peer.Key(), peer.Attrs.BackendType, typ)
	}
	return CheckPeerSubnets(n, self, peer)
}

// CheckPeerSubnets applies the checks every backend makes on a peer's
// subnets: they lie inside the network, do not overlap ours, and it offers
// at least one enabled family with a public address, which is not ours.
//
// A lease naming our public address for other subnets is not a peer: the
// host behind that address is us, so its routes would point at ourselves
// (host-gw: a gateway that is a local address; vxlan: packets
// encapsulated to ourselves and routed back out, a loop). Upstream
// installs it. It is a stale lease of this host — a Kubernetes node object
// left from before a rename, a second lease from a restart with another
// configuration or a different --public-ip — or a misconfigured host
// sharing our address; neither can be routed to, and neither is ours to
// delete, so it is skipped until it expires or is removed. (Acquire reuses
// the lease holding our address, so an ordinary restart keeps one lease.)
func CheckPeerSubnets(n *config.Network, self, peer lease.Lease) error {
	usable := false
	if n.EnableIPv4 && peer.Subnet.IsValid() {
		if !n.Network.Contains(peer.Subnet.Addr()) || peer.Subnet.Bits() < n.Network.Bits() {
			return Skipf(ReasonOutside, "subnet %s is outside the network %s", peer.Subnet, n.Network)
		}
		if self.Subnet.IsValid() && self.Subnet.Overlaps(peer.Subnet) {
			return Skipf(ReasonOverlapSelf, "subnet %s overlaps our subnet %s", peer.Subnet, self.Subnet)
		}
		if !peer.Attrs.PublicIP.IsValid() {
			return Skipf(ReasonNoPublicIP, "lease %s has no PublicIP", peer.Key())
		}
		if peer.Attrs.PublicIP == self.Attrs.PublicIP {
			return Skipf(ReasonOwnPublicIP, "lease %s names our PublicIP %s (a stale lease of this host?)", peer.Key(), peer.Attrs.PublicIP)
		}
		usable = true
	}
	if n.EnableIPv6 && peer.IPv6Subnet.IsValid() {
		if !n.IPv6Network.Contains(peer.IPv6Subnet.Addr()) || peer.IPv6Subnet.Bits() < n.IPv6Network.Bits() {
			return Skipf(ReasonOutside, "subnet %s is outside the network %s", peer.IPv6Subnet, n.IPv6Network)
		}
		if self.IPv6Subnet.IsValid() && self.IPv6Subnet.Overlaps(peer.IPv6Subnet) {
			return Skipf(ReasonOverlapSelf, "subnet %s overlaps our subnet %s", peer.IPv6Subnet, self.IPv6Subnet)
		}
		if !peer.Attrs.PublicIPv6.IsValid() {
			return Skipf(ReasonNoPublicIP, "lease %s has no PublicIPv6", peer.Key())
		}
		if peer.Attrs.PublicIPv6 == self.Attrs.PublicIPv6 {
			return Skipf(ReasonOwnPublicIP, "lease %s names our PublicIPv6 %s (a stale lease of this host?)", peer.Key(), peer.Attrs.PublicIPv6)
		}
		usable = true
	}
	if !usable {
		return Skipf(ReasonFamilyAbsent, "lease %s has no subnet of an enabled family", peer.Key())
	}
	return nil
}

// Backend plans the kernel objects for one backend type. It owns its
// lease data: it encodes ours (Attrs), decodes a peer's once per lease
// event (Peer), and keeps across restarts what peers depend on (vxlan: the
// VTEP MAC, from the surviving device or our old lease; wireguard: the
// private key, in its key file).
type Backend interface {
	// Type is the backend's name, the network config's Backend.Type, and
	// the lease BackendType it writes and accepts (udp's leases carry
	// none, as upstream's).
	Type() string
	// Attrs are the lease attributes this host publishes.
	Attrs() lease.Attrs
	// Resume is told of our own lease found in the store at start (a
	// restart, possibly after a reboot that took the devices): it adopts
	// whatever in it must stay stable for peers and returns the attributes
	// to publish. It may be called more than once, with the same result.
	Resume(existing lease.Lease) lease.Attrs
	// Peer validates a peer lease and plans its objects, decoding its
	// backend data once; an error (a *SkipError) skips the peer. It
	// depends on self and that peer alone — which lets the daemon replan
	// only the peer a lease event is about — and is pure and
	// deterministic.
	Peer(self, peer lease.Lease) (dataplane.Objects, error)
	// PlanBase declares what does not depend on any peer: our devices
	// and any objects of our own. It is pure and deterministic.
	PlanBase(self lease.Lease) *dataplane.State
	// MTU is the MTU pods should use (FLANNEL_MTU).
	MTU() int
	// ProbeAddr is the address that answers for a peer through the path
	// our plan gives it, for the reachability prober: one the peer's own
	// daemon assigns (its PlanBase puts the same address on its device
	// as ours does on ours), so it answers whether or not the peer runs
	// pods. The zero Addr: this backend's peers are not probed. It is
	// pure, and called from the prober's goroutine.
	ProbeAddr(peer lease.Lease) netip.Addr
}

// PublicAttrs are lease attributes of type typ naming the addresses v4
// and v6, each only when its family is enabled: what most backends
// publish (with u.PublicIP/PublicIPv6; extension, as upstream's, with the
// interface's own).
func PublicAttrs(n *config.Network, typ string, v4, v6 netip.Addr) lease.Attrs {
	a := lease.Attrs{BackendType: typ}
	if n.EnableIPv4 {
		a.PublicIP = v4
	}
	if n.EnableIPv6 {
		a.PublicIPv6 = v6
	}
	return a
}

// OverlayAddr is the address a peer's daemon puts on its overlay device
// (vxlan, ipip, wireguard: its subnet's network address as a /32 or
// /128): the IPv4 one when IPv4 is enabled and the peer has it, else the
// IPv6 one. Those backends' ProbeAddr.
func OverlayAddr(n *config.Network, peer lease.Lease) netip.Addr {
	if n.EnableIPv4 && peer.Subnet.IsValid() {
		return peer.Subnet.Addr()
	}
	if n.EnableIPv6 && peer.IPv6Subnet.IsValid() {
		return peer.IPv6Subnet.Addr()
	}
	return netip.Addr{}
}

// Kernel is what a backend may ask of the kernel while it is made: an
// existing device of ours (vxlan reuses its MAC).
type Kernel interface {
	LinkByName(name string) (dataplane.Link, bool, error)
}

// Env is what a backend is made from.
type Env struct {
	Log      *slog.Logger
	Network  *config.Network
	Underlay Underlay
	Options  config.Options
	Kernel   Kernel
	// KernelRelease is the running kernel's release (uname -r), for
	// settings that depend on it (vxlan's --vxlan-tx-checksum auto).
	KernelRelease string
	// CommandRan, if set, is told of every command a backend runs
	// (extension): its config field, how long it took and how it ended.
	CommandRan func(command string, took time.Duration, err error)
}

// PeerRunner is a backend that serves its peers with work of its own
// beside the kernel state: the extension backend runs the operator's
// commands per peer. The daemon runs Serve for its lifetime, once our
// lease is held (self), and after every pass sends the peers it accepted
// on peers (a send may replace one not yet received: only the newest
// set matters). Serve returns when ctx ends.
type PeerRunner interface {
	Serve(ctx context.Context, self lease.Lease, peers <-chan iter.Seq[lease.Lease]) error
}

// Factory makes a backend. A bad setting is a *config.FieldError.
type Factory func(Env) (Backend, error)

// Compose plans the complete desired state for self and peers: PlanBase,
// then every peer's objects, with desired.State's winner rule for keys
// declared twice; peers that Peer refuses are left out. It is what the
// daemon's desired.State reaches one event at a time, so table tests of
// it cover the per-peer planners the daemon uses.
func Compose(b Backend, self lease.Lease, peers []lease.Lease) *dataplane.State {
	d := desired.New(b.PlanBase(self), len(peers))
	for _, p := range peers {
		if objs, err := b.Peer(self, p); err == nil {
			d.SetPeer(p, objs, nil)
		}
	}
	return d.Copy()
}
