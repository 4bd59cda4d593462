package dataplane

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	// subscribeQueue buffers notifications between the library's reader
	// goroutines and ours.
	subscribeQueue = 256
	// subscribeRcvBuf asks for a large socket buffer: one reconcile of
	// thousands of peers causes as many notifications, and an overrun
	// socket (ENOBUFS) loses them. Without CAP_NET_ADMIN the kernel caps
	// the request at net.core.rmem_max.
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
// writes are ignored.
//
// kick is also called once the subscriptions are established, because
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

// watch runs one set of subscriptions until ctx ends or one of them fails.
func (n *Netlink) watch(ctx context.Context, kick func()) (established bool, err error) {
	var (
		mu      sync.Mutex
		lastErr error
	)
	onErr := func(err error) {
		mu.Lock()
		lastErr = err
		mu.Unlock()
	}
	ended := func(what string) error {
		mu.Lock()
		defer mu.Unlock()
		return fmt.Errorf("%s subscription ended: %w", what, errors.Join(lastErr, errors.New("channel closed")))
	}
	var ns *netns.NsHandle
	if n.ns.IsOpen() {
		ns = &n.ns
	}

	done := make(chan struct{})
	var drains []func()
	defer func() {
		// Closing done closes the sockets; the library's readers then close
		// their channels, and draining unblocks any reader stuck sending.
		close(done)
		for _, d := range drains {
			d()
		}
	}()
	links := make(chan netlink.LinkUpdate, subscribeQueue)
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{
		Namespace: ns, ErrorCallback: onErr, ReceiveBufferSize: subscribeRcvBuf,
	}); err != nil {
		return false, fmt.Errorf("subscribe to link updates: %w", err)
	}
	drains = append(drains, func() {
		for range links {
		}
	})
	routes := make(chan netlink.RouteUpdate, subscribeQueue)
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{
		Namespace: ns, ErrorCallback: onErr, ReceiveBufferSize: subscribeRcvBuf,
	}); err != nil {
		return false, fmt.Errorf("subscribe to route updates: %w", err)
	}
	drains = append(drains, func() {
		for range routes {
		}
	})
	// RTNLGRP_NEIGH carries both ARP/NDP entries and, with family
	// AF_BRIDGE, the VXLAN driver's FDB entries.
	neighs := make(chan netlink.NeighUpdate, subscribeQueue)
	if err := netlink.NeighSubscribeWithOptions(neighs, done, netlink.NeighSubscribeOptions{
		Namespace: ns, ErrorCallback: onErr, ReceiveBufferSize: subscribeRcvBuf,
	}); err != nil {
		return false, fmt.Errorf("subscribe to neighbour updates: %w", err)
	}
	drains = append(drains, func() {
		for range neighs {
		}
	})

	kick()
	for {
		var drift bool
		select {
		case <-ctx.Done():
			return true, nil
		case u, ok := <-links:
			if !ok {
				return true, ended("link")
			}
			drift = n.linkEvent(u)
		case u, ok := <-routes:
			if !ok {
				return true, ended("route")
			}
			drift = n.routeEvent(u)
		case u, ok := <-neighs:
			if !ok {
				return true, ended("neighbour")
			}
			drift = n.neighEvent(u)
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

func (n *Netlink) routeEvent(u netlink.RouteUpdate) bool {
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
	r, ok := n.idx.routes[k]
	// A blackhole's notification names no device (IPv4) or lo (IPv6); its
	// type and metric identify it.
	if !ok || r.Blackhole != (u.Route.Type == unix.RTN_BLACKHOLE) ||
		(!r.Blackhole && r.ifindex != u.LinkIndex) || r.Gw != gw || r.prio != u.Priority {
		n.mu.Unlock()
		return false
	}
	delete(n.idx.routes, k)
	if r.nhid != 0 {
		// Re-adding the route makes a new object; this one, if still
		// there, is deleted by the next pass.
		n.nhOrphans = append(n.nhOrphans, r.nhid)
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
		if _, ok := n.idx.fdb[k]; !okMAC || !ok || (!deleted && permanent) {
			return false
		}
		delete(n.idx.fdb, k)
		n.log.Warn("fdb entry of ours removed behind our back", "mac", mac, "dst", ip, "dev", dev)
		return true
	}
	k := NeighKey{Dev: dev, IP: ip}
	nb, ok := n.idx.neighs[k]
	if !ok || (!deleted && permanent && okMAC && mac == nb.MAC) {
		return false
	}
	delete(n.idx.neighs, k)
	n.log.Warn("neighbour of ours changed behind our back", "ip", ip, "dev", dev, "deleted", deleted)
	return true
}
