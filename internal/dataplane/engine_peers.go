package dataplane

import (
	"errors"
	"fmt"
	"io/fs"
	"iter"
	"maps"
	"net/netip"
	"slices"
)

// WireGuard peers and udp forwarding entries, in both phases. They are
// written per device (one write per device and phase where the kernel
// can), added right after the links — before the routes that send traffic
// into the device — and removed after the route deletions.
//
// Neither announces changes (there is no notification for `wg set …
// remove`), so drift on them is found only by a full pass, which reads
// them back.

// ourWGLink returns our WireGuard device dev, which the peers written to
// it must be on: peers elsewhere could not be told apart from others' and
// garbage-collected.
func (e *engine) ourWGLink(dev string) (instLink, error) {
	l, ok := lookup(e, func(x *instIndex) map[string]instLink { return x.links }, dev)
	switch {
	case !ok:
		return instLink{}, fmt.Errorf("device %s: %w", dev, ErrNoDevice)
	case l.Kind != KindWireGuard:
		return instLink{}, fmt.Errorf("device %s is not a WireGuard device", dev)
	}
	return l, nil
}

func wgPeers(x *instIndex) table[WGPeerKey, instWGPeer] { return x.wgPeers }

// addWGPeers writes the desired peers the index does not have as
// declared.
func (p *pass) addWGPeers(desired iter.Seq2[WGPeerKey, WGPeer]) {
	e := p.e
	byDev := map[string][]WGPeer{}
	links := map[string]instLink{}
	for d := range differing(p, desired, wgPeers, checkWGPeer, instWGPeer.is) {
		pr := d.v
		l, err := e.ourWGLink(pr.Dev)
		if err != nil {
			p.fail(fmt.Errorf("set wireguard peer %s dev %s: %w", pr.PublicKey, pr.Dev, err))
			continue
		}
		byDev[pr.Dev] = append(byDev[pr.Dev], pr)
		links[pr.Dev] = l
	}
	for _, dev := range slices.Sorted(maps.Keys(byDev)) {
		peers := byDev[dev]
		for i, err := range e.kern.setWGPeers(links[dev], peers, false) {
			pr := peers[i]
			if err != nil {
				p.fail(fmt.Errorf("set wireguard peer %s dev %s: %w", pr.PublicKey, dev, err))
				continue
			}
			e.withIndex(func(x *instIndex) { x.wgPeers[pr.Key()] = instWGPeer{WGPeer: normWGPeer(pr)} })
			p.changes.WGPeersAdded++
		}
	}
}

// delWGPeers removes the peers of our devices that desired lacks (in a
// delta pass, only touched ones), except on devices about to be deleted.
// WireGuard removes an absent peer without complaint, so a removal is
// counted by the index, not by what the device still had.
func (p *pass) delWGPeers(desired Wanted, gone map[string]bool, touched map[WGPeerKey]struct{}) {
	e := p.e
	stale := takeStale(e, wgPeers,
		desired.WantedWGPeers(),
		func(v instWGPeer) string { return v.Dev }, gone, touched)
	byDev := map[string][]instWGPeer{}
	for _, s := range stale {
		v := s.v
		byDev[v.Dev] = append(byDev[v.Dev], v)
	}
	for _, dev := range slices.Sorted(maps.Keys(byDev)) {
		l, _ := lookup(e, func(x *instIndex) map[string]instLink { return x.links }, dev)
		l.Name = dev
		olds := byDev[dev]
		peers := make([]WGPeer, len(olds))
		for i, v := range olds {
			peers[i] = v.WGPeer
		}
		for i, err := range e.kern.setWGPeers(l, peers, true) {
			switch {
			case err == nil:
				p.changes.WGPeersRemoved++
			case errors.Is(err, fs.ErrNotExist):
				// The device is gone, and its peers with it.
			default:
				v := olds[i]
				e.withIndex(func(x *instIndex) {
					if _, ok := x.wgPeers[v.Key()]; !ok {
						x.wgPeers[v.Key()] = v
					}
				})
				p.fail(fmt.Errorf("remove wireguard peer %s dev %s: %w", v.PublicKey, dev, err))
			}
		}
	}
}

func udpPeers(x *instIndex) table[UDPPeerKey, UDPPeer] { return x.udpPeers }

// addUDPPeers writes the desired entries the index does not have as
// declared: one update per device.
func (p *pass) addUDPPeers(desired iter.Seq2[UDPPeerKey, UDPPeer]) {
	e := p.e
	byDev := map[string][]UDPPeer{}
	for d := range differing(p, desired, udpPeers, checkUDPPeer, func(old, pr UDPPeer) bool { return old == pr }) {
		pr := d.v
		byDev[pr.Dev] = append(byDev[pr.Dev], pr)
	}
	for _, dev := range slices.Sorted(maps.Keys(byDev)) {
		peers := byDev[dev]
		set := make(map[netip.Prefix]netip.AddrPort, len(peers))
		for _, pr := range peers {
			set[pr.Subnet] = pr.Endpoint
		}
		if err := e.kern.setUDPPeers(dev, set, nil); err != nil {
			p.fail(fmt.Errorf("set %d udp peers dev %s: %w", len(peers), dev, err))
			continue
		}
		e.withIndex(func(x *instIndex) {
			for _, pr := range peers {
				x.udpPeers[pr.Key()] = pr
			}
		})
		p.changes.UDPPeersAdded += len(peers)
	}
}

// delUDPPeers removes the entries desired lacks (in a delta pass, only
// touched ones), except on devices about to be deleted.
func (p *pass) delUDPPeers(desired Wanted, gone map[string]bool, touched map[UDPPeerKey]struct{}) {
	e := p.e
	stale := takeStale(e, udpPeers,
		desired.WantedUDPPeers(),
		func(v UDPPeer) string { return v.Dev }, gone, touched)
	byDev := map[string][]UDPPeer{}
	for _, s := range stale {
		v := s.v
		byDev[v.Dev] = append(byDev[v.Dev], v)
	}
	for _, dev := range slices.Sorted(maps.Keys(byDev)) {
		olds := byDev[dev]
		del := make([]netip.Prefix, len(olds))
		for i, v := range olds {
			del[i] = v.Subnet
		}
		switch err := e.kern.setUDPPeers(dev, nil, del); {
		case errors.Is(err, ErrNoDevice):
			// The device is gone, and its table with it.
		case err != nil:
			e.withIndex(func(x *instIndex) {
				for _, v := range olds {
					x.udpPeers[v.Key()] = v
				}
			})
			p.fail(fmt.Errorf("remove %d udp peers dev %s: %w", len(olds), dev, err))
		default:
			p.changes.UDPPeersRemoved += len(olds)
		}
	}
}
