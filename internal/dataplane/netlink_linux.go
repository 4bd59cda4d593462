package dataplane

import (
	"github.com/safchain/ethtool"

	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Netlink reconciles one network namespace: the engine (engine.go) over
// the real kernel, reached through a netlink handle bound to the
// namespace, so no OS thread ever switches namespace for a write. Its
// side of the kernel seam is netlink_kernel_linux.go; Subscribe
// (netlink_watch_linux.go) keeps the engine's index honest about drift.
type Netlink struct {
	*engine
	ns netns.NsHandle
	h  *netlink.Handle
	w  *nlWriter // batched route, neighbour and FDB writes; used under pass

	// useNH: the kernel has usable nexthop objects (nexthop_linux.go),
	// unless PlainRoutes asked for none.
	useNH bool
	// notes counts the notifications Subscribe has read.
	notes atomic.Uint64
	// upPending (under mu): devices our routes use that came back up and
	// whose connected route is awaited (netlink_flap_linux.go).
	upPending map[int]bool

	wg  *wgState  // WireGuard devices (wireguard_linux.go)
	udp *udpState // udp devices (udp_linux.go)

	eth *ethtool.Ethtool // opened on first use, under pass (txcsum_linux.go)
	// greet are peers written to a new WireGuard device, to be greeted
	// once a pass's routes are in (settled): the first allowed
	// address of each. Used under pass.
	greet []netip.Addr
}

// NetlinkOption adjusts a Netlink.
type NetlinkOption func(*netlinkOptions)

type netlinkOptions struct {
	plainRoutes bool
	wgMode      string
	wgCreate    func(name string, mtu int) (WGDevice, error)
	udpCreate   func(UDPSpec) (UDPDevice, error)
	udpView     []UDPStatus
}

// PlainRoutes makes Netlink install every route as a plain route, as on a
// kernel without nexthop objects, instead of giving IPv4 gateway routes a
// nexthop object each.
func PlainRoutes() NetlinkOption { return func(o *netlinkOptions) { o.plainRoutes = true } }

// UsesNexthops reports whether IPv4 gateway routes go through nexthop
// objects.
func (n *Netlink) UsesNexthops() bool { return n.useNH }

var _ Reconciler = (*Netlink)(nil)

// NewNetlink returns a Netlink for namespace ns (netns.None(): the
// caller's). ns must stay open until Close.
func NewNetlink(log *slog.Logger, ns netns.NsHandle, opts ...NetlinkOption) (*Netlink, error) {
	var o netlinkOptions
	for _, opt := range opts {
		opt(&o)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	wg, err := newWGState(o)
	if err != nil {
		return nil, err
	}
	var h *netlink.Handle
	if ns.IsOpen() {
		h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	w, err := newWriter(ns)
	if err != nil {
		h.Close()
		return nil, err
	}
	n := &Netlink{ns: ns, h: h, w: w, wg: wg, udp: newUDPState(o)}
	if !o.plainRoutes {
		ok, why := n.nexthopsUsable()
		n.useNH = ok
		if !ok {
			log.Info("installing plain routes", "component", "dataplane", "reason", why)
		}
	}
	n.engine = newEngine(log, n)
	return n, nil
}

// Close ends the userspace WireGuard devices n serves and releases the
// netlink sockets.
func (n *Netlink) Close() {
	n.closeWG()
	n.closeUDP()
	if n.eth != nil {
		n.eth.Close()
	}
	n.h.Close()
	n.w.close()
}

// Dump reads from the kernel what Reconcile would consider its own given
// links: those VXLAN and WireGuard devices (addresses as withAddrs shows
// them), the routes not made by the kernel itself, permanent neighbours,
// FDB entries and WireGuard peers on them, and main-table routes carrying
// RouteProtocol on any device. It does not change the index.
func (n *Netlink) Dump(links ...string) (*State, error) {
	names := map[string]bool{}
	for _, l := range links {
		names[l] = true
	}
	x, _, err := n.read(names)
	if err != nil {
		return nil, err
	}
	return x.state(), nil
}
