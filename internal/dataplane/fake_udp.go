package dataplane

import (
	"fmt"
	"iter"
)

// udp devices in the Fake: the simulated kernel holds each device's
// forwarding table with the device, as the forwarder holds it in the
// process. A device of ours dies with the process (its TUN is not
// persistent): Restart drops it, with its routes and table, as a daemon
// restart does.

// dropUDPLinks deletes the udp devices from the simulated kernel.
func (k *fakeKernel) dropUDPLinks() {
	for name, l := range k.t.links {
		if l.Kind == KindUDP {
			k.deleteLink(name)
		}
	}
}

func (f *Fake) addUDPPeers(desired iter.Seq2[UDPPeerKey, UDPPeer], c *Changes) (errs []error) {
	for key, p := range desired {
		if old, ok := f.idx.udpPeers[key]; ok && old == p {
			continue
		}
		err := checkUDPPeer(key, p)
		if err == nil {
			err = f.ourUDPLink(p.Dev)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("set udp peer %s dev %s: %w", p.Subnet, p.Dev, err))
			continue
		}
		f.k.t.udpPeers[key] = p
		f.idx.udpPeers[key] = p
		c.UDPPeersAdded++
	}
	return errs
}

// ourUDPLink reports why f may not write entries of dev: it must be a
// udp device of ours in the simulated kernel.
func (f *Fake) ourUDPLink(dev string) error {
	l, ok := f.k.t.links[dev]
	switch {
	case !ok:
		return fmt.Errorf("device %s: %w", dev, ErrNoDevice)
	case l.Kind != KindUDP:
		return fmt.Errorf("device %s is not a udp device", dev)
	}
	return nil
}

// delUDPPeers removes the entries in the index that desired lacks (only
// the touched ones in a delta pass), except on devices about to be
// deleted.
func (f *Fake) delUDPPeers(desired *State, gone map[string]bool, touched map[UDPPeerKey]struct{}, c *Changes) {
	for key, p := range entries(f.idx.udpPeers, touched) {
		if _, ok := desired.UDPPeers[key]; ok || gone[p.Dev] {
			continue
		}
		delete(f.idx.udpPeers, key)
		delete(f.k.t.udpPeers, key)
		c.UDPPeersRemoved++
	}
}

// DeleteUDPPeer removes an entry from a device's table behind the
// Reconciler's back; only a full Reconcile notices.
func (f *Fake) DeleteUDPPeer(key UDPPeerKey) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	delete(f.k.t.udpPeers, key)
}
