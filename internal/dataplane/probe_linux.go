package dataplane

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// This file is the measurement side of the dataplane, for `weft bench`:
// it observes a namespace that some daemon (ours or upstream's) programs,
// cheaply enough to poll every few milliseconds without stealing the CPU
// the daemon under test needs, and it never writes objects of its own
// except to delete a device on request.

// DevCounts counts the per-peer objects on one device: main-table routes
// not made by the kernel, permanent neighbours, and permanent FDB entries.
type DevCounts struct{ Routes, Neighs, FDB int }

// Probe counts objects in one namespace through a raw netlink socket.
// A dump of thousands of entries is parsed only as far as the fixed
// headers (and, for routes, the attributes up to RTA_OIF): the library's
// RouteList/NeighList would build a Go object per entry, which at 10,000
// peers costs more CPU per poll than the daemon under test spends per
// event. A Probe is not safe for concurrent use.
type Probe struct {
	h   *netlink.Handle
	s   *nl.NetlinkSocket
	buf []byte
	seq uint32
}

// NewProbe opens a Probe on namespace ns, which must stay open until
// Close.
func NewProbe(ns netns.NsHandle) (*Probe, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	return &Probe{h: h, s: s, buf: make([]byte, 1<<20)}, nil
}

// Close releases the sockets.
func (p *Probe) Close() {
	p.s.Close()
	p.h.Close()
}

// LinkIndex returns dev's ifindex, or 0 if it does not exist.
func (p *Probe) LinkIndex(dev string) (int, error) {
	l, err := p.h.LinkByName(dev)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("look up link %s: %w", dev, err)
	}
	return l.Attrs().Index, nil
}

// DeleteLink deletes dev; a missing device is not an error.
func (p *Probe) DeleteLink(dev string) error {
	l, err := p.h.LinkByName(dev)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up link %s: %w", dev, err)
	}
	if err := p.h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", dev, err)
	}
	return nil
}

// Count counts the IPv4 objects on dev (all zero when dev is absent). It
// resolves dev on every call, because a daemon restart may recreate it
// under another ifindex.
func (p *Probe) Count(dev string) (DevCounts, error) {
	ifi, err := p.LinkIndex(dev)
	if err != nil || ifi == 0 {
		return DevCounts{}, err
	}
	var c DevCounts
	if c.Routes, err = p.dumpCount(unix.RTM_GETROUTE, unix.AF_INET, ifi); err != nil {
		return c, err
	}
	if c.Neighs, err = p.dumpCount(unix.RTM_GETNEIGH, unix.AF_INET, ifi); err != nil {
		return c, err
	}
	if c.FDB, err = p.dumpCount(unix.RTM_GETNEIGH, unix.AF_BRIDGE, ifi); err != nil {
		return c, err
	}
	return c, nil
}

// maxProbeAttempts bounds retries of a dump interrupted by concurrent
// changes (NLM_F_DUMP_INTR), which is the normal case while a daemon is
// busy writing.
const maxProbeAttempts = 20

func (p *Probe) dumpCount(typ uint16, family uint8, ifindex int) (int, error) {
	for range maxProbeAttempts {
		n, intr, err := p.dumpOnce(typ, family, ifindex)
		if err != nil {
			return 0, err
		}
		if !intr {
			return n, nil
		}
	}
	return 0, fmt.Errorf("dump type %d family %d: %w", typ, family, netlink.ErrDumpInterrupted)
}

func (p *Probe) dumpOnce(typ uint16, family uint8, ifindex int) (n int, intr bool, err error) {
	p.seq++
	req := nl.NewNetlinkRequest(int(typ), unix.NLM_F_DUMP)
	req.Seq = p.seq
	if typ == unix.RTM_GETROUTE {
		req.AddData(&nl.RtMsg{RtMsg: unix.RtMsg{Family: family}})
	} else {
		req.AddData(&netlink.Ndmsg{Family: family})
	}
	if err := p.s.Send(req); err != nil {
		return 0, false, fmt.Errorf("send dump request: %w", err)
	}
	fd := p.s.GetFd()
	for {
		m, _, err := unix.Recvfrom(fd, p.buf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return 0, false, fmt.Errorf("receive dump: %w", err)
		}
		b := p.buf[:m]
		for len(b) >= unix.NLMSG_HDRLEN {
			l := int(binary.NativeEndian.Uint32(b[0:4]))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return 0, false, errors.New("receive dump: truncated message")
			}
			mtype := binary.NativeEndian.Uint16(b[4:6])
			flags := binary.NativeEndian.Uint16(b[6:8])
			seq := binary.NativeEndian.Uint32(b[8:12])
			body := b[unix.NLMSG_HDRLEN:l]
			b = b[min(nlmAlign(l), len(b)):]
			if seq != p.seq {
				continue // a late answer to an earlier, abandoned dump
			}
			if flags&unix.NLM_F_DUMP_INTR != 0 {
				intr = true
			}
			switch mtype {
			case unix.NLMSG_DONE:
				return n, intr, nil
			case unix.NLMSG_ERROR:
				if len(body) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(body[0:4])); e != 0 {
						return 0, false, fmt.Errorf("dump: %w", unix.Errno(-e))
					}
				}
				return n, intr, nil
			case unix.RTM_NEWROUTE:
				if routeOn(body, ifindex) {
					n++
				}
			case unix.RTM_NEWNEIGH:
				if permanentOn(body, ifindex) {
					n++
				}
			}
		}
	}
}

func nlmAlign(l int) int { return (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// routeOn reports whether an RTM_NEWROUTE body is a unicast main-table
// route not made by the kernel, leaving through ifindex.
func routeOn(b []byte, ifindex int) bool {
	if len(b) < unix.SizeofRtMsg {
		return false
	}
	table, proto, typ := uint32(b[4]), b[5], b[7]
	if typ != unix.RTN_UNICAST || proto == unix.RTPROT_KERNEL {
		return false
	}
	oif := 0
	for a := b[unix.SizeofRtMsg:]; len(a) >= unix.SizeofRtAttr; {
		l := int(binary.NativeEndian.Uint16(a[0:2]))
		if l < unix.SizeofRtAttr || l > len(a) {
			break
		}
		switch binary.NativeEndian.Uint16(a[2:4]) {
		case unix.RTA_TABLE:
			if l >= 8 {
				table = binary.NativeEndian.Uint32(a[4:8])
			}
		case unix.RTA_OIF:
			if l >= 8 {
				oif = int(binary.NativeEndian.Uint32(a[4:8]))
			}
		}
		a = a[min((l+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1), len(a)):]
	}
	return table == unix.RT_TABLE_MAIN && oif == ifindex
}

// permanentOn reports whether an RTM_NEWNEIGH body (neighbour or FDB
// entry) is permanent and on ifindex.
func permanentOn(b []byte, ifindex int) bool {
	if len(b) < unix.SizeofNdMsg {
		return false
	}
	ifi := int(int32(binary.NativeEndian.Uint32(b[4:8])))
	state := binary.NativeEndian.Uint16(b[8:10])
	return ifi == ifindex && state&unix.NUD_PERMANENT != 0
}

// RouteWatch is a subscription to IPv4 and IPv6 route changes in one
// namespace. Notifications queue in the socket from the moment it is
// opened, so a caller can open it, then cause a change, then Run.
type RouteWatch struct {
	ch   chan netlink.RouteUpdate
	done chan struct{}
	errs chan error
}

// OpenRouteWatch subscribes to route changes in ns.
func OpenRouteWatch(ns netns.NsHandle) (*RouteWatch, error) {
	w := &RouteWatch{
		ch:   make(chan netlink.RouteUpdate, 4096),
		done: make(chan struct{}),
		errs: make(chan error, 1),
	}
	err := netlink.RouteSubscribeWithOptions(w.ch, w.done, netlink.RouteSubscribeOptions{
		Namespace:         &ns,
		ReceiveBufferSize: subscribeRcvBuf,
		ErrorCallback: func(err error) {
			select {
			case w.errs <- err:
			default:
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to route updates: %w", err)
	}
	return w, nil
}

// Run calls fn for every route added (RTM_NEWROUTE) or deleted
// (RTM_DELROUTE) in the main table until ctx ends, then closes the
// subscription. fn runs on Run's goroutine, as soon as the notification is
// read, so a timestamp taken in fn is the arrival time. It returns nil
// when ctx ends and an error if the subscription fails (e.g. the socket
// overran and notifications were lost).
func (w *RouteWatch) Run(ctx context.Context, fn func(dst netip.Prefix, added bool)) error {
	defer func() {
		close(w.done)
		for range w.ch { // unblock the library's reader until it closes ch
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-w.errs:
			return fmt.Errorf("route subscription: %w", err)
		case u, ok := <-w.ch:
			if !ok {
				return errors.New("route subscription ended")
			}
			if u.Table != 0 && u.Table != unix.RT_TABLE_MAIN {
				continue
			}
			dst, ok := routeDst(u.Route)
			if !ok {
				continue
			}
			switch u.Type {
			case unix.RTM_NEWROUTE:
				fn(dst, true)
			case unix.RTM_DELROUTE:
				fn(dst, false)
			}
		}
	}
}
