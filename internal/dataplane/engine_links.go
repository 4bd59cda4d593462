package dataplane

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"syscall"
)

// The links phase: our devices created, adopted or replaced (ensureLink),
// fixed in place (fixLink), and deleted once no longer desired (delLinks).

// forgetEnded forgets the devices of ours that ended on their own (reported by
// the kernel): the link and what was on it leave the index, so this pass
// makes the device again.
func (e *engine) forgetEnded() {
	for _, r := range e.kern.reap() {
		l, ok := lookup(e, func(x *instIndex) map[string]instLink { return x.links }, r.Name)
		if ok && l.Kind == r.Kind && l.user == r.user {
			e.forgetLink(r.Name)
		}
	}
}

func (p *pass) ensureLink(want Link) {
	e, name := p.e, want.Name
	have, ok := lookup(e, func(x *instIndex) map[string]instLink { return x.links }, name)
	if ok && linkSatisfied(want, have.Link, have.up, have.addrs) {
		return
	}
	known := ok // a device of a kind we manage
	if !ok {
		l, found, k, err := e.kern.readLink(name)
		if err != nil {
			p.fail(err)
			return
		}
		have, ok, known = l, found, k
	}
	if ok && !(known && sameIdentity(want, have.Link) && e.kern.fits(have)) {
		// The kernel takes the device's routes, neighbours and FDB entries
		// with it; forget them first so their deletion notifications are
		// not mistaken for drift.
		e.forgetLink(name)
		switch err := e.kern.removeLink(name, have); {
		case err == nil:
			p.changes.LinksRemoved++
			e.log.Info("deleted link with another identity", "link", name, "vni", have.VNI, "local", have.Local)
		case !errors.Is(err, syscall.ENODEV):
			p.fail(fmt.Errorf("delete link %s to recreate it: %w", name, err))
			return
		}
		ok = false
	}
	created := false
	if !ok {
		if err := e.kern.addLink(want); err != nil {
			p.fail(fmt.Errorf("create link %s: %w", name, err))
			return
		}
		p.changes.LinksAdded++
		l, found, _, err := e.kern.readLink(name)
		if err != nil || !found {
			p.fail(fmt.Errorf("read back link %s: %w", name, errors.Join(err, ErrNoDevice)))
			return
		}
		have, created = l, true
	}
	if p.fixLink(want, &have) && !created {
		p.changes.LinksUpdated++
	}
	e.withIndex(func(x *instIndex) { x.links[name] = have })
}

// setLink writes one attribute of have, reporting a failure as what.
func (p *pass) setLink(have *instLink, w linkWrite, what string) bool {
	if err := p.e.kern.setLink(*have, w); err != nil {
		p.fail(fmt.Errorf("%s: %w", what, err))
		return false
	}
	return true
}

// fixLink makes have's mutable attributes match want, updating have to
// what the kernel accepted; it reports whether it wrote anything.
func (p *pass) fixLink(want Link, have *instLink) (wrote bool) {
	name := want.Name
	have.addrs = slices.Clone(have.addrs) // may share its array with the index entry
	if want.MTU != 0 && want.MTU != have.MTU &&
		p.setLink(have, linkWrite{op: linkMTU, mtu: want.MTU}, fmt.Sprintf("set mtu %d on %s", want.MTU, name)) {
		have.MTU, wrote = want.MTU, true
	}
	if !want.MAC.IsZero() && want.MAC != have.MAC {
		// A new device address makes the kernel flush the device's ARP and
		// ND entries, permanent ones included (neigh_changeaddr). Forget
		// ours first, so the add phase rewrites them and the flush's
		// notifications are not taken for drift.
		p.e.withIndex(func(x *instIndex) {
			deleteFunc(x.neighs, func(_ NeighKey, nb instNeigh) bool { return nb.Dev == name })
		})
		if p.setLink(have, linkWrite{op: linkMAC, mac: want.MAC}, fmt.Sprintf("set address %s on %s", want.MAC, name)) {
			have.MAC, wrote = want.MAC, true
		}
	}
	// The new addresses go in before the stale ones go: the kernel
	// flushes every IPv4 route through a device that loses its last IPv4
	// address (fib_disable_ip), announcing none of them, so removing first
	// would silently take the routes of a re-addressed device along.
	for _, a := range []netip.Prefix{want.Addr, want.Addr2} {
		if p.addAddr(a, have) {
			wrote = true
		}
	}
	for _, a := range staleLinkAddrs(want, have.addrs) {
		if err := p.e.kern.setLink(*have, linkWrite{op: linkAddrDel, addr: a}); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
			p.fail(fmt.Errorf("remove address %s from %s: %w", a, name, err))
			continue
		}
		have.addrs, wrote = slices.DeleteFunc(have.addrs, func(b netip.Prefix) bool { return b == a }), true
	}
	if !have.up && p.setLink(have, linkWrite{op: linkUp}, fmt.Sprintf("set %s up", name)) {
		have.up, wrote = true, true
	}
	if want.Kind == KindWireGuard && p.fixWG(want, have) {
		wrote = true
	}
	if want.TxChecksum != OffloadAsIs && want.TxChecksum != have.TxChecksum && p.fixTxChecksum(want, have) {
		wrote = true
	}
	return wrote
}

// addAddr adds want (if valid) to the device unless it has it.
func (p *pass) addAddr(want netip.Prefix, have *instLink) (wrote bool) {
	if !want.IsValid() || slices.Contains(have.addrs, want) {
		return false
	}
	if err := p.e.kern.setLink(*have, linkWrite{op: linkAddrAdd, addr: want}); err != nil && !errors.Is(err, syscall.EEXIST) {
		p.fail(fmt.Errorf("add address %s to %s: %w", want, have.Name, err))
		return false
	}
	have.addrs = append(have.addrs, want)
	return true
}

// fixWG sets a WireGuard device's listen port and private key where they
// differ from want's (zero in want: leave as is), in one write that names
// no peers, so the peers and their sessions stay.
func (p *pass) fixWG(want Link, have *instLink) (wrote bool) {
	w := linkWrite{op: linkWG}
	if want.Port != 0 && want.Port != have.Port {
		w.port = want.Port
	}
	if want.PrivateKey != (WGKey{}) && want.PrivateKey != have.PrivateKey {
		w.key = want.PrivateKey
	}
	if w.port == 0 && w.key == (WGKey{}) {
		return false
	}
	if !p.setLink(have, w, "set listen port and private key of "+want.Name) {
		return false
	}
	if w.port != 0 {
		have.Port = want.Port
	}
	if w.key != (WGKey{}) {
		have.PrivateKey = want.PrivateKey
	}
	return true
}

// fixTxChecksum reads the device's TX checksum offload (the index does
// not know it after a full read: Dump leaves it out) and sets it if it is
// not want's.
func (p *pass) fixTxChecksum(want Link, have *instLink) (wrote bool) {
	cur, err := p.e.kern.txChecksum(want.Name)
	if err != nil {
		p.fail(err)
		return false
	}
	if cur != want.TxChecksum {
		if err := p.e.kern.setLink(*have, linkWrite{op: linkTxChecksum, csum: want.TxChecksum}); err != nil {
			p.fail(err)
			return false
		}
		p.e.log.Info("set checksum offload", "component", "dataplane", "link", want.Name, "feature", TxChecksumFeature, "to", want.TxChecksum.String())
		wrote = true
	}
	have.TxChecksum = want.TxChecksum
	return wrote
}

// goneLinks are our links that desired no longer has. Objects on them are
// not deleted one by one: deleting the device takes them along.
func (p *pass) goneLinks(desired Wanted) map[string]bool {
	gone := map[string]bool{}
	p.e.mu.Lock()
	defer p.e.mu.Unlock()
	for name := range p.e.idx.links {
		if _, ok := desired.WantedLinks()[name]; !ok {
			gone[name] = true
		}
	}
	return gone
}

func (p *pass) delLinks(gone map[string]bool) {
	e := p.e
	for _, name := range slices.Sorted(maps.Keys(gone)) {
		l, ok := lookup(e, func(x *instIndex) map[string]instLink { return x.links }, name)
		if !ok {
			continue
		}
		e.forgetLink(name)
		if err := e.kern.removeLink(name, l); err != nil {
			if errors.Is(err, syscall.ENODEV) {
				continue
			}
			// Still there: keep the link itself, so the next pass retries;
			// its objects are re-read by the next full pass.
			e.withIndex(func(x *instIndex) { x.links[name] = l })
			p.fail(fmt.Errorf("delete link %s: %w", name, err))
			continue
		}
		p.changes.LinksRemoved++
		e.log.Info("deleted link", "link", name)
	}
}
