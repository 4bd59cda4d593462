// Package udp plans the udp backend: upstream flannel's userspace
// encapsulation, for hosts whose kernel has no VXLAN. Packets for the
// cluster network are routed into a TUN device, flannel0, whose
// forwarder (package dataplane/udptun, inside flanneld) sends each one as
// the payload of a UDP datagram to the host owning the destination's
// subnet, and writes what arrives on its socket back into the device.
//
// Design notes. Device: flannel0 (upstream asks the kernel for
// "flannel%d", which is flannel0 on any host running one flanneld),
// dataplane.KindUDP, listening on Backend.Port (default 8285) at the
// underlay interface's address, as upstream binds it. It carries our
// subnet's network address as a /32, the source address for traffic the
// host itself sends into the overlay, and the MTU of the underlay less 28
// bytes (the outer IPv4 and UDP headers), which is also FLANNEL_MTU.
//
// Routes: one, the cluster network through flannel0 (as upstream adds it
// explicitly, "10.5.0.0/16 dev flannel0"); our own subnet goes to the CNI
// bridge, whose connected route is more specific. The forwarder, not the
// kernel, knows the peers: per peer lease one dataplane.UDPPeer, its
// subnet to its public address at our Port (upstream's leases publish no
// port: every host of a network uses the network config's).
//
// Lease: as upstream writes it, the public IP and nothing else — no
// BackendType, no BackendData: {"PublicIP":"…","PublicIPv6":null}. Peers
// are accepted on the same terms (a lease naming another backend type is
// a host of another backend, skipped). IPv4 only, as upstream's.
//
// Differences from upstream:
//   - A destination in the cluster network that no peer holds is dropped
//     and counted; upstream's proxy answers it with an ICMP net
//     unreachable.
//   - IPv6 (EnableIPv6) is refused at start with an error naming the
//     field; upstream runs and carries IPv4 alone.
//   - Port 0 means the default; upstream would listen on a random port
//     and send to port 0.
package udp

import (
	"fmt"
	"net/netip"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

const (
	// Device is the TUN device's name.
	Device = "flannel0"
	// DefaultPort is upstream's default Backend.Port.
	DefaultPort = 8285
	// Overhead is what encapsulation adds: an IPv4 and a UDP header.
	Overhead = 28
	// LeaseType is the BackendType of udp leases: none, as upstream
	// writes them.
	LeaseType = ""
)

// Backend is the udp planner for one host.
type Backend struct {
	net      *config.Network
	underlay backend.Underlay
	port     uint16
}

// Factory implements backend.Factory.
func Factory(env backend.Env) (backend.Backend, error) {
	return New(env.Network, env.Underlay)
}

// New checks the network config for the udp backend and returns its
// planner.
func New(n *config.Network, u backend.Underlay) (*Backend, error) {
	switch {
	case n.EnableIPv6:
		return nil, &config.FieldError{Field: "EnableIPv6", Reason: "the udp backend carries IPv4 only (as upstream's); use vxlan or wireguard for IPv6"}
	case !n.EnableIPv4:
		return nil, &config.FieldError{Field: "EnableIPv4", Reason: "the udp backend carries IPv4 and needs it enabled"}
	case u.MTU != 0 && u.MTU-Overhead < 68:
		return nil, &config.FieldError{Field: "Backend.Type", Reason: fmt.Sprintf("udp: the underlay %s has MTU %d, leaving %d for flannel0, below IPv4's minimum of 68", u.Name, u.MTU, u.MTU-Overhead)}
	}
	port := n.Backend.Port
	if port == 0 {
		port = DefaultPort
	}
	return &Backend{net: n, underlay: u, port: port}, nil
}

var _ backend.Backend = (*Backend)(nil)

// Type implements backend.Backend: the backend's name. Its leases carry
// LeaseType.
func (b *Backend) Type() string { return config.BackendUDP }

// Port is the UDP port we listen on and send to.
func (b *Backend) Port() uint16 { return b.port }

// MTU implements backend.Backend.
func (b *Backend) MTU() int { return b.underlay.MTU - Overhead }

// Attrs implements backend.Backend: the public IP alone.
func (b *Backend) Attrs() lease.Attrs {
	return lease.Attrs{PublicIP: b.underlay.PublicIP, BackendType: LeaseType}
}

// Resume implements backend.Backend: nothing to keep; peers need only our
// public IP.
func (b *Backend) Resume(lease.Lease) lease.Attrs { return b.Attrs() }

// ProbeAddr implements backend.Backend: the peer's flannel0 address,
// which its forwarder delivers to its own kernel.
func (b *Backend) ProbeAddr(p lease.Lease) netip.Addr { return backend.OverlayAddr(b.net, p) }

// PlanBase implements backend.Backend: flannel0 and the route for the
// cluster network through it.
func (b *Backend) PlanBase(self lease.Lease) *dataplane.State {
	s := dataplane.NewStateSized(1, 1)
	l := dataplane.Link{Kind: dataplane.KindUDP, Name: Device, Port: b.port, Local: b.underlay.LocalIP, MTU: b.MTU()}
	if self.Subnet.IsValid() {
		l.Addr = netip.PrefixFrom(self.Subnet.Addr(), 32)
	}
	s.Links[Device] = l
	s.AddRoute(dataplane.Route{Dst: b.net.Network, Dev: Device})
	return s
}

// Peer implements backend.Backend: the peer's subnet to its public IP at
// our port.
func (b *Backend) Peer(self, p lease.Lease) (dataplane.Objects, error) {
	var o dataplane.Objects
	if err := backend.CheckPeer(b.net, LeaseType, self, p); err != nil {
		return o, err
	}
	if !p.Subnet.IsValid() {
		return o, backend.Skipf(backend.ReasonFamilyAbsent, "lease %s has no IPv4 subnet", p.Key())
	}
	o.AddUDPPeer(dataplane.UDPPeer{Dev: Device, Subnet: p.Subnet, Endpoint: netip.AddrPortFrom(p.Attrs.PublicIP, b.port)})
	return o, nil
}
