package dataplane

import (
	"net/netip"
)

// kernel is the seam between the one reconcile algorithm (engine) and what
// it reconciles: the real kernel through netlink (Netlink) or a simulated
// one (Fake). It knows kernel semantics — how to read our objects, how a
// request is carried out, what vanishes with a device — and nothing of the
// diff: which objects to write, in which order, what to retry, how the
// index follows the outcomes are the engine's.
//
// The engine calls it under its pass lock and never with its index lock
// held, so a kernel may take locks of its own (and a simulated one may
// notify subscribers, which take the index lock).
type kernel interface {
	// read is a full read: our links among names (addresses, and for
	// WireGuard port, key and peers; for udp the forwarding tables), the
	// routes, neighbours and FDB entries on them, and the routes carrying
	// RouteProtocol on any device (kernelRead says what else it found).
	read(names map[string]bool) (*instIndex, kernelRead, error)
	// ifindex returns the ifindex of device dev (0: there is none).
	ifindex(dev string) (int, error)
	// exec carries out object requests in order and returns each one's
	// outcome; lost reports that some outcome is unknown (the kernel's
	// state must be read again).
	exec(reqs []request) (errs []error, lost bool)
	// nexthops reports whether IPv4 gateway routes on our VXLAN devices
	// go through nexthop objects (nexthop_linux.go says why).
	nexthops() bool

	// readLink reads one device by name: found is false when it does not
	// exist, known false when it is not of a kind we manage.
	readLink(name string) (l instLink, found, known bool, err error)
	// addLink creates want's device (no address, down), which readLink
	// then finds.
	addLink(want Link) error
	// removeLink deletes device l; an error wrapping ENODEV means it was
	// gone already.
	removeLink(name string, l instLink) error
	// fits reports whether an existing device of want's identity is of
	// the implementation the kernel would make (WireGuard: kernel or
	// userspace).
	fits(l instLink) bool
	// setLink writes one attribute of device l in place.
	setLink(l instLink, w linkWrite) error
	// txChecksum reads device name's TX checksum offload.
	txChecksum(name string) (Offload, error)

	// setWGPeers adds or updates (remove: removes) peers of WireGuard
	// device l in as few writes as it can and returns each one's
	// outcome; one wrapping fs.ErrNotExist means the device is gone.
	setWGPeers(l instLink, peers []WGPeer, remove bool) []error
	// setUDPPeers updates the forwarding table of udp device dev; an error
	// wrapping ErrNoDevice means we serve no such device.
	setUDPPeers(dev string, set map[netip.Prefix]netip.AddrPort, del []netip.Prefix) error

	// reap returns the devices of ours that ended on their own since the
	// last pass (a userspace device whose process side ended), with the
	// kind and implementation they had, so the pass makes them again.
	reap() []instLink
	// settled is called once a pass's additions are written (before its
	// deletions): a kernel greets the peers of new WireGuard devices.
	settled()
}

// kernelRead is what a full read found besides the index.
type kernelRead struct {
	// strays are routes of ours that duplicate an indexed one's key.
	strays []instRoute
	// byName maps every device's name to its ifindex.
	byName map[string]int
	// nhStrays are nexthop objects of ours no route uses.
	nhStrays []uint32
	// nhForeign are the IDs of other programs' nexthop objects; nhMax is
	// the highest ID of ours (0: none).
	nhForeign map[uint32]struct{}
	nhMax     uint32
}

// reqOp is what a request does.
type reqOp uint8

const (
	reqRouteReplace reqOp = iota // `ip route replace`, with route's nexthop object if nhid
	reqRouteDel                  // delete exactly route (metric, protocol, next hop)
	reqNeighReplace              // `ip neigh replace … nud permanent`
	reqNeighDel
	reqFDBAdd // `bridge fdb replace` (unicast) or `append` (flooding MACs)
	reqFDBDel
	reqNexthopAdd // `ip nexthop add id route.nhid via route.Gw dev route.ifindex` (exclusive)
	reqNexthopDel // `ip nexthop del id route.nhid`
)

// request is one object write. Only the field of its op's kind is set
// (route also for nexthop objects).
type request struct {
	op    reqOp
	route instRoute
	neigh instNeigh
	fdb   instFDB
}

// linkOp is the attribute a linkWrite sets.
type linkOp uint8

const (
	linkMTU linkOp = iota
	linkMAC
	linkAddrAdd // add addr; EEXIST is success
	linkAddrDel // remove addr; EADDRNOTAVAIL is success
	linkUp
	linkWG         // a WireGuard device's listen port and private key (zero: leave as is), naming no peers
	linkTxChecksum // TX checksum offload
)

// linkWrite is one in-place write to a device.
type linkWrite struct {
	op   linkOp
	mtu  int
	mac  MAC
	addr netip.Prefix
	port uint16
	key  WGKey
	csum Offload
}
