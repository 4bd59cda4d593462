package dataplane

import (
	"golang.org/x/sys/unix"

	"github.com/vishvananda/netlink/nl"
)

// Link flaps. When a device is set down the kernel flushes the IPv4 routes
// through it without a word (no RTM_DELROUTE; IPv6 ones are announced),
// and it does not put them back when the device comes up again: the
// host-gw and DirectRouting routes over the underlay are gone
// (flannel#1070, #1759), and so are the routes, neighbours and nexthop
// objects of one of our own devices that someone set down. Losing only the
// carrier keeps the routes (they turn linkdown), so it needs nothing.
//
// The subscription therefore watches devices' up state. A link
// notification caused by a change of flags says which flags changed
// (ifi_change); one caused by a device's creation says all of them, and
// one for a carrier change none. So, statelessly:
//
//   - one of our devices set down, or any device one of our routes goes
//     through set up again, marks the next pass full (a kernel re-read:
//     it finds what was flushed, and brings our device back up) and kicks;
//   - after such a device came up, the first route the kernel derives from
//     its addresses (RTM_NEWROUTE, protocol kernel) kicks once more: the
//     link notification may arrive just before the connected route that
//     makes a gateway reachable again exists, and a route written in that
//     moment is refused (ENETUNREACH); without this kick it would wait for
//     the retry a second later.
//
// Nothing here writes. The devices awaiting their connected route belong
// to the subscription goroutine, under mu like the index it consults.

// allChanged is ifi_change in the notification of a new device.
const allChanged = 0xffffffff

// linkFlagsEvent handles an RTM_NEWLINK; it reports whether to kick.
func (n *Netlink) linkFlagsEvent(data []byte) bool {
	if len(data) < unix.SizeofIfInfomsg {
		return false
	}
	msg := nl.DeserializeIfInfomsg(data)
	index, up := int(msg.Index), msg.Flags&unix.IFF_UP != 0
	flipped := msg.Change&unix.IFF_UP != 0 && msg.Change != allChanged
	n.mu.Lock()
	defer n.mu.Unlock()
	if !up {
		delete(n.upPending, index)
	}
	if !flipped {
		return false
	}
	if name := n.idx.devName(index); name != "" {
		if up {
			return false // our pass brought it up
		}
		n.log.Warn("link of ours set down behind our back", "link", name)
		n.resync.Store(true)
		return true
	}
	if !up || !n.routesVia(index) {
		return false
	}
	n.log.Info("link came back up: repairing the routes through it", "ifindex", index)
	if n.upPending == nil {
		n.upPending = map[int]bool{}
	}
	n.upPending[index] = true
	n.resync.Store(true)
	return true
}

// routesVia reports whether a route in the index goes out through the
// device with that ifindex (under mu).
func (n *Netlink) routesVia(index int) bool {
	for _, r := range n.idx.routes.all() {
		if !r.Blackhole && r.ifindex == index {
			return true
		}
	}
	return false
}

// connectedRouteEvent handles an RTM_NEWROUTE: the first route the kernel
// itself adds on a device that just came back up kicks once more.
func (n *Netlink) connectedRouteEvent(data []byte) bool {
	n.mu.Lock()
	pending := len(n.upPending) > 0
	n.mu.Unlock()
	if !pending {
		return false // the common case: no flap under way, nothing to parse
	}
	r, _, ok := parseRoute(data)
	if !ok || r.Protocol != unix.RTPROT_KERNEL || (r.Table != 0 && r.Table != unix.RT_TABLE_MAIN) {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.upPending[r.LinkIndex] {
		return false
	}
	delete(n.upPending, r.LinkIndex)
	// The pass the link notification caused re-read the kernel; what it
	// could not write is missing from the index, which a complete diff
	// finds.
	return true
}

// forgetLinkState drops what the subscription knows of a deleted device
// (its ifindex may be reused).
func (n *Netlink) forgetLinkState(index int) {
	n.mu.Lock()
	delete(n.upPending, index)
	n.mu.Unlock()
}
