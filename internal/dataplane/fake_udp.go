package dataplane

import "net/netip"

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

// setUDPPeers implements kernel: the table of udp device dev.
func (k *fakeKernel) setUDPPeers(dev string, set map[netip.Prefix]netip.AddrPort, del []netip.Prefix) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if l, ok := k.t.links[dev]; !ok || l.Kind != KindUDP {
		return errNoDevice(dev)
	}
	for subnet, ep := range set {
		p := UDPPeer{Dev: dev, Subnet: subnet, Endpoint: ep}
		k.t.udpPeers[p.Key()] = p
	}
	for _, subnet := range del {
		delete(k.t.udpPeers, UDPPeerKey{Dev: dev, Subnet: subnet})
	}
	return nil
}

// DeleteUDPPeer removes an entry from a device's table behind the
// Reconciler's back; only a full Reconcile notices.
func (f *Fake) DeleteUDPPeer(key UDPPeerKey) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	delete(f.k.t.udpPeers, key)
}
