package dataplane

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Batching limits: one sendmsg carries at most this many requests or
// bytes. The kernel handles every message of a datagram in order before
// sendmsg returns, queueing one ack per message on our socket, so a chunk
// must also keep its acks within the receive buffer (batchRcvBuf).
const (
	batchMaxMsgs  = 256
	batchMaxBytes = 64 << 10
	batchRcvBuf   = 4 << 20
	// batchAckWait bounds the wait for an ack that is neither queued nor
	// reported lost (ENOBUFS); the kernel answers route and neighbour
	// requests synchronously, so it only guards against the unexpected.
	batchAckWait = 5 * time.Second
)

// nlWriter sends many route and neighbour requests per sendmsg on one
// NETLINK_ROUTE socket of its own and matches the acks to the requests by
// sequence number, so each write's outcome is known individually. Calls
// are serialised by the caller (Netlink.pass).
type nlWriter struct {
	s   *nl.NetlinkSocket
	seq uint32
	buf []byte
	rb  []byte
	// from and fromLen receive each datagram's sender (recv).
	from    unix.RawSockaddrNetlink
	fromLen uint32
}

func newWriter(ns netns.NsHandle) (*nlWriter, error) {
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	// Room for a whole chunk's acks (an ack's skb takes ~1 KiB of the
	// budget): force past rmem_max when privileged, else ask within it.
	if s.SetReceiveBufferSize(batchRcvBuf, true) != nil {
		_ = s.SetReceiveBufferSize(batchRcvBuf, false)
	}
	return &nlWriter{s: s, rb: make([]byte, 1<<16)}, nil
}

func (w *nlWriter) close() { w.s.Close() }

// errAckLost marks a request whose ack never arrived (the receive queue
// overflowed): whether the kernel applied it is unknown.
var errAckLost = errors.New("netlink ack lost")

// netlinkRequest builds the netlink message for req. Messages are built
// only as their datagram is filled and dropped once it is sent, so a pass
// over thousands of objects never holds thousands of built messages (each
// a dozen small allocations).
func netlinkRequest(req *request) *nl.NetlinkRequest {
	switch req.op {
	case reqRouteReplace:
		r := &req.route
		return routeRequest(r.netlink(), r.nhid, unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	case reqRouteDel:
		r := &req.route
		return routeRequest(r.netlink(), r.nhid, unix.RTM_DELROUTE, 0)
	case reqNeighReplace:
		return neighRequest(req.neigh.netlink(), unix.RTM_NEWNEIGH, unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	case reqNeighDel:
		return neighRequest(req.neigh.netlink(), unix.RTM_DELNEIGH, 0)
	case reqFDBAdd:
		return neighRequest(req.fdb.netlink(), unix.RTM_NEWNEIGH, fdbAddFlags(req.fdb.MAC))
	case reqFDBDel:
		return neighRequest(req.fdb.netlink(), unix.RTM_DELNEIGH, 0)
	case reqNexthopAdd:
		r := &req.route
		return nexthopRequest(r.nhid, r.ifindex, r.Gw, r.OnLink)
	}
	return nexthopDelRequest(req.route.nhid) // reqNexthopDel
}

// fdbAddFlags are the flags that add f: the VXLAN driver keeps one remote
// per unicast MAC, and `bridge fdb append` of a unicast MAC it already
// has is a silent no-op. So a peer that kept its VTEP MAC but moved to
// another public address would keep the old remote, and the deletion of
// the old entry that follows in the same pass would remove the MAC
// altogether until the next full pass: a unicast MAC is replaced
// (`bridge fdb replace`; the later deletion of the old remote then finds
// nothing to remove). Only the all-zero and multicast MACs, which flood,
// can have several remotes, appended.
func fdbAddFlags(mac MAC) int {
	if mac.IsZero() || mac[0]&1 == 1 {
		return unix.NLM_F_CREATE | unix.NLM_F_APPEND
	}
	return unix.NLM_F_CREATE | unix.NLM_F_REPLACE
}

// exec sends reqs in order, in as few datagrams as the limits allow, and
// returns each request's outcome (nil: acknowledged without error). It
// reports lost = true when some outcome is unknown (errAckLost).
func (w *nlWriter) exec(reqs []request) (errs []error, lost bool) {
	errs = make([]error, len(reqs))
	for start := 0; start < len(reqs); {
		buf := w.buf[:0]
		first := w.seq + 1
		end := start
		for end < len(reqs) && end-start < batchMaxMsgs {
			req := netlinkRequest(&reqs[end])
			req.Seq = first + uint32(end-start)
			b := req.Serialize()
			if end > start && len(buf)+len(b) > batchMaxBytes {
				break
			}
			buf = append(buf, b...)
			end++
		}
		w.buf = buf
		w.seq = first + uint32(end-start) - 1
		if err := w.send(buf); err != nil {
			for i := start; i < end; i++ {
				errs[i] = err
			}
		} else if w.collect(first, errs[start:end]) {
			lost = true
		}
		start = end
	}
	return errs, lost
}

func (w *nlWriter) send(b []byte) error {
	to := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	for {
		err := unix.Sendto(w.s.GetFd(), b, 0, to)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			if err := w.wait(unix.POLLOUT); err != nil {
				return err
			}
			continue
		}
		return fmt.Errorf("send netlink batch: %w", err)
	}
}

// wait polls the socket for events, up to batchAckWait.
func (w *nlWriter) wait(events int16) error {
	deadline := time.Now().Add(batchAckWait)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return unix.ETIMEDOUT
		}
		fds := []unix.PollFd{{Fd: int32(w.s.GetFd()), Events: events}}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return err
		case n > 0:
			return nil
		}
	}
}

// collect reads the acks of the len(errs) requests numbered from first,
// storing each one's errno. Acks for other sequence numbers (a chunk given
// up on earlier) are skipped. It reports whether some ack was lost.
func (w *nlWriter) collect(first uint32, errs []error) (lost bool) {
	got := make([]bool, len(errs))
	pending := len(errs)
	giveUp := func(err error) bool {
		for i := range errs {
			if !got[i] {
				errs[i] = fmt.Errorf("%w: %w", errAckLost, err)
			}
		}
		return true
	}
	overrun := false
	for pending > 0 {
		n, fromKernel, err := w.recv()
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOBUFS):
			// Some acks were dropped; those still queued are read on.
			overrun = true
			continue
		case errors.Is(err, unix.EAGAIN):
			if overrun {
				// Everything the kernel sent is queued before sendmsg
				// returns: what is missing now was dropped.
				return giveUp(unix.ENOBUFS)
			}
			if err := w.wait(unix.POLLIN); err != nil {
				return giveUp(err)
			}
			continue
		case err != nil:
			return giveUp(err)
		}
		if !fromKernel {
			continue
		}
		// The messages of the datagram, read in place (the standard
		// parser allocates a slice for each datagram: one per ack).
		for b := w.rb[:n]; len(b) > 0; {
			if len(b) < unix.NLMSG_HDRLEN {
				return giveUp(syscall.EINVAL)
			}
			l := int(nl.NativeEndian().Uint32(b[0:4]))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return giveUp(syscall.EINVAL)
			}
			typ, seq, data := nl.NativeEndian().Uint16(b[4:6]), nl.NativeEndian().Uint32(b[8:12]), b[unix.NLMSG_HDRLEN:l]
			b = b[min(len(b), (l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
			if typ != unix.NLMSG_ERROR || len(data) < 4 {
				continue
			}
			i := int(seq - first)
			if i < 0 || i >= len(errs) || got[i] {
				continue
			}
			got[i] = true
			pending--
			if e := int32(nl.NativeEndian().Uint32(data[:4])); e != 0 {
				errs[i] = syscall.Errno(-e)
			}
		}
	}
	return false
}

// recv reads one datagram into w.rb, reporting whether the kernel sent
// it. unix.Recvfrom would allocate the sender's address at every call:
// one per ack, tens of thousands in a mass leave.
func (w *nlWriter) recv() (n int, fromKernel bool, err error) {
	w.from, w.fromLen = unix.RawSockaddrNetlink{}, unix.SizeofSockaddrNetlink
	r, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(w.s.GetFd()), uintptr(unsafe.Pointer(&w.rb[0])), uintptr(len(w.rb)),
		unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(&w.from)), uintptr(unsafe.Pointer(&w.fromLen)))
	if e != 0 {
		return 0, false, e
	}
	return int(r), w.from.Family == unix.AF_NETLINK && w.from.Pid == nl.PidKernel, nil
}

// routeRequest builds the request netlink.Handle.RouteReplace (typ
// RTM_NEWROUTE, flags NLM_F_CREATE|NLM_F_REPLACE) or RouteDel (typ
// RTM_DELROUTE, flags 0) sends for r, for the fields instRoute.netlink
// sets: destination, gateway, table, priority, protocol, type, flags,
// scope and output device.
//
// With nhid non-zero the route names that nexthop object (RTA_NH_ID)
// instead of a gateway, device and flags, which the kernel refuses
// alongside an object.
func routeRequest(r *netlink.Route, nhid uint32, typ, flags int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(typ, flags|unix.NLM_F_ACK)
	msg := nl.NewRtMsg()
	if typ == unix.RTM_DELROUTE {
		msg = nl.NewRtDelMsg()
	}
	family := -1
	var attrs []*nl.RtAttr
	if r.Dst != nil && r.Dst.IP != nil {
		ones, _ := r.Dst.Mask.Size()
		msg.Dst_len = uint8(ones)
		family = nl.GetIPFamily(r.Dst.IP)
		attrs = append(attrs, nl.NewRtAttr(unix.RTA_DST, ipData(r.Dst.IP, family)))
	}
	if r.Gw != nil && nhid == 0 {
		family = nl.GetIPFamily(r.Gw)
		attrs = append(attrs, nl.NewRtAttr(unix.RTA_GATEWAY, ipData(r.Gw, family)))
	}
	if r.Table > 0 {
		if r.Table >= 256 {
			msg.Table = unix.RT_TABLE_UNSPEC
			attrs = append(attrs, nl.NewRtAttr(unix.RTA_TABLE, nl.Uint32Attr(uint32(r.Table))))
		} else {
			msg.Table = uint8(r.Table)
		}
	}
	if r.Priority > 0 {
		attrs = append(attrs, nl.NewRtAttr(unix.RTA_PRIORITY, nl.Uint32Attr(uint32(r.Priority))))
	}
	if r.Protocol > 0 {
		msg.Protocol = uint8(r.Protocol)
	}
	if r.Type > 0 {
		msg.Type = uint8(r.Type)
	}
	msg.Scope = uint8(r.Scope)
	msg.Family = uint8(family)
	if nhid != 0 {
		attrs = append(attrs, nl.NewRtAttr(rtaNHID, nl.Uint32Attr(nhid)))
	} else {
		msg.Flags = uint32(r.Flags)
		attrs = append(attrs, nl.NewRtAttr(unix.RTA_OIF, nl.Uint32Attr(uint32(r.LinkIndex))))
	}
	req.AddData(msg)
	for _, a := range attrs {
		req.AddData(a)
	}
	return req
}

func ipData(ip net.IP, family int) []byte {
	if family == nl.FAMILY_V4 {
		return ip.To4()
	}
	return ip.To16()
}

// neighRequest builds the request netlink.Handle.NeighSet (typ
// RTM_NEWNEIGH, flags NLM_F_CREATE|NLM_F_REPLACE), NeighAppend
// (RTM_NEWNEIGH, NLM_F_CREATE|NLM_F_APPEND) or NeighDel (RTM_DELNEIGH, 0)
// sends for nb, for the fields instNeigh.netlink and instFDB.netlink set.
func neighRequest(nb *netlink.Neigh, typ, flags int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(typ, flags|unix.NLM_F_ACK)
	family := nb.Family
	if family <= 0 {
		family = nl.GetIPFamily(nb.IP)
	}
	req.AddData(&netlink.Ndmsg{
		Family: uint8(family),
		Index:  uint32(nb.LinkIndex),
		State:  uint16(nb.State),
		Type:   uint8(nb.Type),
		Flags:  uint8(nb.Flags),
	})
	ip := nb.IP.To4()
	if ip == nil {
		ip = nb.IP.To16()
	}
	req.AddData(nl.NewRtAttr(netlink.NDA_DST, ip))
	if nb.HardwareAddr != nil {
		req.AddData(nl.NewRtAttr(netlink.NDA_LLADDR, []byte(nb.HardwareAddr)))
	}
	return req
}
