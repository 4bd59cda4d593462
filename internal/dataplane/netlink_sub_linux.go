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
// start, and as many short-lived allocations). Notifications name the
// netlink port of the socket whose request caused them, which is what
// the filter matches. What others do (a user, another agent, the kernel
// itself, or our own link writes on the library handle) still arrives.

// ownWritesFilter is a classic BPF program that drops netlink messages
// whose nlmsg_pid is pid, and accepts the rest.
func ownWritesFilter(pid uint32) []unix.SockFilter {
	// BPF_ABS loads read big-endian; nlmsg_pid is in host order.
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], pid)
	k := binary.BigEndian.Uint32(b[:])
	return []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 12}, // offsetof(struct nlmsghdr, nlmsg_pid)
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: k},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff},
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
		link, err := netlink.LinkDeserialize(&hdr, data)
		if err != nil {
			return false
		}
		return n.linkEvent(netlink.LinkUpdate{IfInfomsg: *nl.DeserializeIfInfomsg(data), Header: hdr, Link: link})
	case unix.RTM_NEWNEIGH, unix.RTM_DELNEIGH:
		nb, err := netlink.NeighDeserialize(data)
		if err != nil {
			return false
		}
		return n.neighEvent(netlink.NeighUpdate{Type: typ, Neigh: *nb})
	case unix.RTM_DELROUTE:
		r, ok := parseRoute(data)
		if !ok {
			return false
		}
		return n.routeEvent(netlink.RouteUpdate{Type: typ, Route: r})
	}
	// New links and routes: only deletions of ours matter (a replaced
	// route of ours is seen by the next full pass).
	return false
}

// parseRoute reads what routeEvent looks at from an RTM_*ROUTE body:
// family, destination, table, type, gateway, output device and metric
// (the library's route parser is not exported).
func parseRoute(b []byte) (netlink.Route, bool) {
	if len(b) < unix.SizeofRtMsg {
		return netlink.Route{}, false
	}
	msg := nl.DeserializeRtMsg(b)
	r := netlink.Route{Family: int(msg.Family), Table: int(msg.Table), Type: int(msg.Type), Protocol: netlink.RouteProtocol(msg.Protocol)}
	attrs, err := nl.ParseRouteAttr(b[unix.SizeofRtMsg:])
	if err != nil {
		return netlink.Route{}, false
	}
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.RTA_DST:
			r.Dst = &net.IPNet{IP: net.IP(a.Value), Mask: net.CIDRMask(int(msg.Dst_len), 8*len(a.Value))}
		case unix.RTA_GATEWAY:
			r.Gw = net.IP(a.Value)
		case unix.RTA_OIF:
			if len(a.Value) >= 4 {
				r.LinkIndex = int(binary.NativeEndian.Uint32(a.Value))
			}
		case unix.RTA_PRIORITY:
			if len(a.Value) >= 4 {
				r.Priority = int(binary.NativeEndian.Uint32(a.Value))
			}
		case unix.RTA_TABLE:
			if len(a.Value) >= 4 {
				r.Table = int(binary.NativeEndian.Uint32(a.Value))
			}
		}
	}
	return r, true
}
