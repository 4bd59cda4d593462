package dataplane

import (
	"encoding/binary"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The subscription is one socket on the link, neighbour and route groups,
// read by Subscribe's goroutine, rather than the library's three
// subscriptions: the socket carries a filter that drops, inside the
// kernel, every notification caused by our own batched writes. A pass
// that installs 5,000 peers makes 20,000 objects, and the kernel
// announces each one to every listener; the index already agrees with
// them (Reconcile records an object before writing it), so reading and
// parsing them was pure cost (~15% of the daemon's CPU time in a cold
// start, and as many short-lived allocations). Route and neighbour
// notifications name the netlink port of the socket whose request caused
// them, which is what the filter matches; FDB additions name none, and
// the filter drops the permanent ones by content. What others do (a
// user, another agent, the kernel itself, or our own link writes on the
// library handle) still arrives, FDB deletions included (ours too: they
// cannot be told apart, and cost a parse each).

// ownWritesFilter is a classic BPF program that drops netlink messages
// whose nlmsg_pid is pid, and permanent FDB entries being added (which
// the VXLAN driver announces with no port at all, so that the port test
// cannot catch ours; an FDB entry added permanent is never drift either:
// Subscribe acts on FDB deletions only). Everything else is accepted.
func ownWritesFilter(pid uint32) []unix.SockFilter {
	const (
		ld  = unix.BPF_LD | unix.BPF_ABS
		jeq = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret = unix.BPF_RET | unix.BPF_K
		// Offsets: struct nlmsghdr {len u32; type u16; flags u16; seq
		// u32; pid u32}, then struct ndmsg {family u8; pad u8, u16;
		// ifindex s32; state u16; …}.
		offType   = 4
		offPid    = 12
		offFamily = unix.NLMSG_HDRLEN
		offState  = unix.NLMSG_HDRLEN + 8
	)
	// BPF_ABS loads read big-endian; the header fields are host order.
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], pid)
	pidBE := binary.BigEndian.Uint32(b[:])
	binary.NativeEndian.PutUint16(b[:2], unix.RTM_NEWNEIGH)
	typeBE := uint32(binary.BigEndian.Uint16(b[:2]))
	// The byte of ndm_state that holds NUD_PERMANENT (0x80).
	binary.NativeEndian.PutUint16(b[:2], unix.NUD_PERMANENT)
	stateByte := uint32(offState)
	if b[0] == 0 {
		stateByte++
	}
	// Jump offsets count the instructions skipped after the jump.
	const accept, drop = 8, 9
	to := func(from, target int) uint8 { return uint8(target - from - 1) }
	return []unix.SockFilter{
		/* 0 */ {Code: ld | unix.BPF_W, K: offPid},
		/* 1 */ {Code: jeq, Jt: to(1, drop), K: pidBE},
		/* 2 */ {Code: ld | unix.BPF_H, K: offType},
		/* 3 */ {Code: jeq, Jf: to(3, accept), K: typeBE},
		/* 4 */ {Code: ld | unix.BPF_B, K: offFamily},
		/* 5 */ {Code: jeq, Jf: to(5, accept), K: unix.AF_BRIDGE},
		/* 6 */ {Code: ld | unix.BPF_B, K: stateByte},
		/* 7 */ {Code: unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, Jt: to(7, drop), K: unix.NUD_PERMANENT},
		/* 8 */ {Code: ret, K: 0xffffffff}, // accept
		/* 9 */ {Code: ret, K: 0}, // drop
	}
}

// subscribe opens the subscription socket in n's namespace.
func (n *Netlink) subscribe() (*nl.NetlinkSocket, error) {
	pid, err := n.w.s.GetPid()
	if err != nil {
		return nil, fmt.Errorf("netlink port of the writer: %w", err)
	}
	s, err := nl.SubscribeAt(n.ns, netns.None(), unix.NETLINK_ROUTE,
		unix.RTNLGRP_LINK, unix.RTNLGRP_NEIGH, unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("subscribe to link, neighbour and route updates: %w", err)
	}
	// A large buffer: a burst of changes by others (or by the kernel, a
	// device going away) must not overrun the socket. Without
	// CAP_NET_ADMIN the kernel caps the request at net.core.rmem_max.
	if s.SetReceiveBufferSize(subscribeRcvBuf, true) != nil {
		_ = s.SetReceiveBufferSize(subscribeRcvBuf, false)
	}
	prog := ownWritesFilter(pid)
	if err := unix.SetsockoptSockFprog(s.GetFd(), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
		&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}); err != nil {
		s.Close()
		return nil, fmt.Errorf("filter our own notifications: %w", err)
	}
	return s, nil
}

// notification dispatches one message to the index; it reports whether an
// object of ours changed behind our back.
func (n *Netlink) notification(typ uint16, hdr unix.NlMsghdr, data []byte) bool {
	switch typ {
	case unix.RTM_DELLINK:
		if len(data) < unix.SizeofIfInfomsg {
			return false
		}
		msg := nl.DeserializeIfInfomsg(data)
		n.forgetLinkState(int(msg.Index))
		link, err := decodeSafely(func() (netlink.Link, error) { return netlink.LinkDeserialize(&hdr, data) })
		if err != nil {
			return false
		}
		return n.linkEvent(netlink.LinkUpdate{IfInfomsg: *msg, Header: hdr, Link: link})
	case unix.RTM_NEWLINK:
		return n.linkFlagsEvent(data)
	case unix.RTM_NEWROUTE:
		return n.connectedRouteEvent(data)
	case unix.RTM_NEWNEIGH, unix.RTM_DELNEIGH:
		nb, err := decodeSafely(func() (*netlink.Neigh, error) { return netlink.NeighDeserialize(data) })
		if err != nil {
			return false
		}
		return n.neighEvent(netlink.NeighUpdate{Type: typ, Neigh: *nb})
	case unix.RTM_DELROUTE:
		r, nhid, ok := parseRoute(data)
		if !ok {
			return false
		}
		return n.routeEvent(netlink.RouteUpdate{Type: typ, Route: r}, nhid)
	}
	// Nothing else is subscribed. (A route of ours replaced by someone
	// arrives as RTM_NEWROUTE: the next full pass sees it.)
	return false
}

// parseRoute reads a route message (a notification or a dump entry) as
// far as this package looks at routes: family, destination, table, type,
// protocol, scope, flags, gateway, output device, metric, whether it is
// multipath, and the nexthop object it names (RTA_NH_ID, which the
// library's parser, not exported anyway, does not read).
func parseRoute(b []byte) (r netlink.Route, nhid uint32, ok bool) {
	if len(b) < unix.SizeofRtMsg {
		return netlink.Route{}, 0, false
	}
	msg := nl.DeserializeRtMsg(b)
	r = netlink.Route{Family: int(msg.Family), Table: int(msg.Table), Type: int(msg.Type),
		Protocol: netlink.RouteProtocol(msg.Protocol), Scope: netlink.Scope(msg.Scope), Flags: int(msg.Flags)}
	attrs, ok := parseAttrs(b[unix.SizeofRtMsg:])
	if !ok {
		return netlink.Route{}, 0, false
	}
	for _, a := range attrs {
		switch a.typ {
		case unix.RTA_DST:
			r.Dst = &net.IPNet{IP: net.IP(a.val), Mask: net.CIDRMask(int(msg.Dst_len), 8*len(a.val))}
		case unix.RTA_GATEWAY:
			r.Gw = net.IP(a.val)
		case unix.RTA_OIF:
			if len(a.val) >= 4 {
				r.LinkIndex = int(binary.NativeEndian.Uint32(a.val))
			}
		case unix.RTA_PRIORITY:
			if len(a.val) >= 4 {
				r.Priority = int(binary.NativeEndian.Uint32(a.val))
			}
		case unix.RTA_TABLE:
			if len(a.val) >= 4 {
				r.Table = int(binary.NativeEndian.Uint32(a.val))
			}
		case unix.RTA_MULTIPATH:
			// Only its presence matters here: such routes are not ours.
			r.MultiPath = []*netlink.NexthopInfo{{}}
		case rtaNHID:
			if len(a.val) >= 4 {
				nhid = binary.NativeEndian.Uint32(a.val)
			}
		}
	}
	return r, nhid, true
}
