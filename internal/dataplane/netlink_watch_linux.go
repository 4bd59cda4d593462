package dataplane

import (
	"context"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	// subscribeRcvBuf asks for a large socket buffer: a burst of changes
	// causes as many notifications, and an overrun socket (ENOBUFS) loses
	// them. Without CAP_NET_ADMIN the kernel caps the request at
	// net.core.rmem_max.
	subscribeRcvBuf = 4 << 20
	// resubscribeDelay spaces attempts to re-establish a lost subscription.
	resubscribeDelay = time.Second
)

// Subscribe watches the namespace for changes to objects in the index
// until ctx ends. When one of ours is deleted — a link (and with it
// everything on it), a route, a neighbour, an FDB entry — or a neighbour
// of ours turns non-permanent or changes MAC, it drops the object from the
// index and calls kick, so that the caller's next Reconcile, even a
// non-full one, writes it again. Notifications caused by Reconcile's own
// writes are ignored (most never reach us: netlink_sub_linux.go).
//
// kick is also called once the subscription is established, because
// changes before that point were not observed. If the kernel drops
// notifications (a full socket buffer), Subscribe re-subscribes, marks the
// next Reconcile as full and kicks. It returns an error only if the first
// subscription fails, and nil when ctx ends.
func (n *Netlink) Subscribe(ctx context.Context, kick func()) error {
	for first := true; ; first = false {
		established, err := n.watch(ctx, kick)
		if ctx.Err() != nil {
			return nil
		}
		if first && !established {
			return err
		}
		n.log.Warn("netlink subscription lost, next reconcile is full", "err", err)
		n.resync.Store(true)
		kick()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(resubscribeDelay):
		}
	}
}

// watch runs one subscription until ctx ends or it fails.
func (n *Netlink) watch(ctx context.Context, kick func()) (established bool, err error) {
	s, err := n.subscribe()
	if err != nil {
		return false, err
	}
	stop := context.AfterFunc(ctx, s.Close) // unblocks Receive
	defer func() {
		if stop() {
			s.Close()
		}
	}()
	kick()
	for {
		msgs, _, err := s.Receive()
		if ctx.Err() != nil {
			return true, nil
		}
		if err != nil {
			// ENOBUFS: the kernel dropped notifications.
			return true, fmt.Errorf("netlink subscription: %w", err)
		}
		n.notes.Add(uint64(len(msgs)))
		drift := false
		for _, m := range msgs {
			if n.notification(m.Header.Type, unix.NlMsghdr(m.Header), m.Data) {
				drift = true
			}
		}
		if drift {
			kick()
		}
	}
}

func (n *Netlink) linkEvent(u netlink.LinkUpdate) bool {
	if u.Header.Type != unix.RTM_DELLINK || u.Link == nil {
		return false
	}
	name := u.Link.Attrs().Name
	n.mu.Lock()
	l, ok := n.idx.links[name]
	// The ifindex tells a deletion of the device we know from that of one
	// we replaced (or that another program created under the same name).
	if !ok || l.index != int(u.Index) {
		n.mu.Unlock()
		return false
	}
	delete(n.idx.links, name)
	n.idx.dropDev(name)
	n.mu.Unlock()
	n.log.Warn("link of ours deleted behind our back", "link", name)
	return true
}

// routeEvent handles a route notification; nhid is the nexthop object it
// names (0: none).
func (n *Netlink) routeEvent(u netlink.RouteUpdate, nhid uint32) bool {
	if u.Type != unix.RTM_DELROUTE || (u.Table != 0 && u.Table != unix.RT_TABLE_MAIN) {
		return false
	}
	dst, ok := routeDst(u.Route)
	if !ok {
		return false
	}
	gw, _ := addrFromIP(u.Gw)
	k := RouteKey{dst}
	n.mu.Lock()
	r, ok := n.idx.routes.get(k)
	// A blackhole's notification names no device (IPv4) or lo (IPv6); its
	// type and metric identify it.
	// The object tells our route from an older copy of it whose deletion
	// is announced late.
	if !ok || r.Blackhole != (u.Route.Type == unix.RTN_BLACKHOLE) ||
		(!r.Blackhole && r.ifindex != u.LinkIndex) || r.Gw != gw || r.prio != u.Priority || r.nhid != nhid {
		n.mu.Unlock()
		return false
	}
	n.idx.routes.del(k)
	if r.nhid != 0 {
		// Re-adding the route makes a new object; this one, if still
		// there, is unused (see delNexthops).
		n.nhFreed = append(n.nhFreed, r.nhid)
	}
	n.mu.Unlock()
	n.log.Warn("route of ours deleted behind our back", "dst", dst, "dev", r.Dev)
	return true
}

func (n *Netlink) neighEvent(u netlink.NeighUpdate) bool {
	ip, okIP := addrFromIP(u.IP)
	mac, okMAC := macFrom(u.HardwareAddr)
	if !okIP {
		return false
	}
	deleted := u.Type == unix.RTM_DELNEIGH
	permanent := u.State&unix.NUD_PERMANENT != 0
	n.mu.Lock()
	defer n.mu.Unlock()
	dev := n.idx.devName(u.LinkIndex)
	if dev == "" {
		return false
	}
	if u.Family == unix.AF_BRIDGE {
		k := FDB{Dev: dev, MAC: mac, Dst: ip}
		if _, ok := n.idx.fdb.get(k); !okMAC || !ok || (!deleted && permanent) {
			return false
		}
		n.idx.fdb.del(k)
		n.log.Warn("fdb entry of ours removed behind our back", "mac", mac, "dst", ip, "dev", dev)
		return true
	}
	k := NeighKey{Dev: dev, IP: ip}
	nb, ok := n.idx.neighs.get(k)
	if !ok || (!deleted && permanent && okMAC && mac == nb.MAC) {
		return false
	}
	n.idx.neighs.del(k)
	n.log.Warn("neighbour of ours changed behind our back", "ip", ip, "dev", dev, "deleted", deleted)
	return true
}
