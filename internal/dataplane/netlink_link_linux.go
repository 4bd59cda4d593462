package dataplane

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Our devices in Netlink: created, adopted or replaced (ensureLink), fixed
// in place (fixLink), and deleted once no longer desired (delLinks). The
// WireGuard specifics are in wireguard_linux.go.

func (p *pass) ensureLink(want Link) {
	n, name := p.n, want.Name
	n.mu.Lock()
	have, ok := n.idx.links[name]
	n.mu.Unlock()
	if ok && linkSatisfied(want, have.Link, have.up, have.addrs) {
		return
	}
	known := ok // a device of a kind we manage
	if !ok {
		l, found, k, err := n.readLink(name)
		if err != nil {
			p.fail(err)
			return
		}
		have, ok, known = l, found, k
	}
	if ok && !(known && sameIdentity(want, have.Link) && n.wgFits(have)) {
		// The kernel takes the device's routes, neighbours and FDB entries
		// with it; forget them first so their deletion notifications are
		// not mistaken for drift.
		n.forgetLink(name)
		switch err := n.removeLink(name, have); {
		case err == nil:
			p.changes.LinksRemoved++
			n.log.Info("deleted link with another identity", "link", name, "vni", have.VNI, "local", have.Local)
		case !errors.Is(err, unix.ENODEV):
			p.fail(fmt.Errorf("delete link %s to recreate it: %w", name, err))
			return
		}
		ok = false
	}
	created := false
	if !ok {
		if err := n.addLink(want); err != nil {
			p.fail(fmt.Errorf("create link %s: %w", name, err))
			return
		}
		p.changes.LinksAdded++
		l, found, _, err := n.readLink(name)
		if err != nil || !found {
			p.fail(fmt.Errorf("read back link %s: %w", name, errors.Join(err, ErrNoDevice)))
			return
		}
		have, created = l, true
		if want.Kind == KindWireGuard {
			n.wg.fresh[name] = true
		}
	}
	if p.fixLink(want, &have) && !created {
		p.changes.LinksUpdated++
	}
	n.mu.Lock()
	n.idx.links[name] = have
	n.mu.Unlock()
}

func newVxlan(want Link) *netlink.Vxlan {
	v := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: want.Name, MTU: want.MTU},
		VxlanId:      int(want.VNI),
		VtepDevIndex: want.ParentIndex,
		Port:         int(want.Port), // 0: not sent, the kernel default applies
		Learning:     want.Learning,
		GBP:          want.GBP,
	}
	if !want.MAC.IsZero() {
		v.HardwareAddr = net.HardwareAddr(want.MAC[:])
	}
	if want.Local.IsValid() {
		v.SrcAddr = want.Local.AsSlice()
	}
	return v
}

// fixLink makes have's mutable attributes match want, updating have to
// what the kernel accepted; it reports whether it wrote anything.
func (p *pass) fixLink(want Link, have *nlLink) (wrote bool) {
	h, name := p.n.h, want.Name
	link := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: have.index, Name: name}}
	have.addrs = slices.Clone(have.addrs) // may share its array with the index entry
	if want.MTU != 0 && want.MTU != have.MTU {
		if err := h.LinkSetMTU(link, want.MTU); err != nil {
			p.fail(fmt.Errorf("set mtu %d on %s: %w", want.MTU, name, err))
		} else {
			have.MTU, wrote = want.MTU, true
		}
	}
	if !want.MAC.IsZero() && want.MAC != have.MAC {
		// A new device address makes the kernel flush the device's ARP and
		// ND entries, permanent ones included (neigh_changeaddr). Forget
		// ours first, so the add phase rewrites them and the flush's
		// notifications are not taken for drift.
		p.n.mu.Lock()
		maps.DeleteFunc(p.n.idx.neighs, func(_ NeighKey, nb nlNeigh) bool { return nb.Dev == name })
		p.n.mu.Unlock()
		if err := h.LinkSetHardwareAddr(link, net.HardwareAddr(want.MAC[:])); err != nil {
			p.fail(fmt.Errorf("set address %s on %s: %w", want.MAC, name, err))
		} else {
			have.MAC, wrote = want.MAC, true
		}
	}
	// The new addresses go in before the stale ones go: the kernel
	// flushes every IPv4 route through a device that loses its last IPv4
	// address (fib_disable_ip), announcing none of them, so removing first
	// would silently take the routes of a re-addressed device along.
	for _, a := range []netip.Prefix{want.Addr, want.Addr2} {
		if p.addAddr(link, a, have) {
			wrote = true
		}
	}
	for _, a := range staleLinkAddrs(want, have.addrs) {
		if err := h.AddrDel(link, &netlink.Addr{IPNet: ipNet(a)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			p.fail(fmt.Errorf("remove address %s from %s: %w", a, name, err))
			continue
		}
		have.addrs, wrote = slices.DeleteFunc(have.addrs, func(b netip.Prefix) bool { return b == a }), true
	}
	if !have.up {
		if err := h.LinkSetUp(link); err != nil {
			p.fail(fmt.Errorf("set %s up: %w", name, err))
		} else {
			have.up, wrote = true, true
		}
	}
	if want.Kind == KindWireGuard && p.fixWG(want, have) {
		wrote = true
	}
	if want.TxChecksum != OffloadAsIs && want.TxChecksum != have.TxChecksum && p.fixTxChecksum(want, have) {
		wrote = true
	}
	return wrote
}

// fixTxChecksum reads the device's TX checksum offload (the index does
// not know it after a full read: Dump leaves it out) and sets it if it is
// not want's.
func (p *pass) fixTxChecksum(want Link, have *nlLink) (wrote bool) {
	cur, err := p.n.readTxChecksum(want.Name)
	if err != nil {
		p.fail(err)
		return false
	}
	if cur != want.TxChecksum {
		if err := p.n.setTxChecksum(want.Name, want.TxChecksum); err != nil {
			p.fail(err)
			return false
		}
		p.n.log.Info("set checksum offload", "component", "dataplane", "link", want.Name, "feature", TxChecksumFeature, "to", want.TxChecksum.String())
		wrote = true
	}
	have.TxChecksum = want.TxChecksum
	return wrote
}

// addAddr adds want (if valid) to the device unless it has it.
func (p *pass) addAddr(link netlink.Link, want netip.Prefix, have *nlLink) (wrote bool) {
	if !want.IsValid() || slices.Contains(have.addrs, want) {
		return false
	}
	addr := &netlink.Addr{IPNet: ipNet(want)}
	if want.Addr().Is6() {
		// The address is unique by lease construction, and duplicate
		// address detection on an overlay without a default FDB
		// destination reaches no one: it would only keep the address
		// tentative (unusable as a source) for a second.
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := p.n.h.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		p.fail(fmt.Errorf("add address %s to %s: %w", want, link.Attrs().Name, err))
		return false
	}
	have.addrs = append(have.addrs, want)
	return true
}

// forgetLink drops a link and everything on it from the index.
func (n *Netlink) forgetLink(name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.idx.links, name)
	n.idx.dropDev(name)
}

// goneLinks are our links that desired no longer has. Objects on them are
// not deleted one by one: deleting the device takes them along.
func (p *pass) goneLinks(desired *State) map[string]bool {
	gone := map[string]bool{}
	p.n.mu.Lock()
	defer p.n.mu.Unlock()
	for name := range p.n.idx.links {
		if _, ok := desired.Links[name]; !ok {
			gone[name] = true
		}
	}
	return gone
}

func (p *pass) delLinks(gone map[string]bool) {
	n := p.n
	for _, name := range slices.Sorted(maps.Keys(gone)) {
		n.mu.Lock()
		l, ok := n.idx.links[name]
		n.mu.Unlock()
		if !ok {
			continue
		}
		n.forgetLink(name)
		if err := n.removeLink(name, l); err != nil {
			if errors.Is(err, unix.ENODEV) {
				continue
			}
			// Still there: keep the link itself, so the next pass retries;
			// its objects are re-read by the next full pass.
			n.withIndex(func(x *nlIndex) { x.links[name] = l })
			p.fail(fmt.Errorf("delete link %s: %w", name, err))
			continue
		}
		p.changes.LinksRemoved++
		n.log.Info("deleted link", "link", name)
	}
}
