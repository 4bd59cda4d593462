package dataplane

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// The Fake's WireGuard devices behave as the kernel's (Netlink with a
// userspace device behaves the same): a device is created without key or
// peers on a port of its own choosing, key and port are set in place, and
// peer changes are never announced — Subscribe sees no WireGuard drift, so
// only a full Reconcile (which reads the peers back) repairs it.

// fakeWGPeer is a peer as the simulated device holds it: normalised as
// normWGPeer does, with the counters a status read reports.
type fakeWGPeer struct {
	WGPeer
	handshake time.Time
	rx, tx    int64
}

// fakeWGPortBase is where the ports of devices created without one start
// (the kernel picks a random free port).
const fakeWGPortBase = 40000

// newFakeLink is a device as the simulated kernel creates it for want,
// down, before the engine fixes it: no address, and for WireGuard no key
// and a port of its own.
func newFakeLink(want Link, index int) instLink {
	l := instLink{Link: want, index: index}
	l.Addr, l.Addr2 = netip.Prefix{}, netip.Prefix{}
	if want.Kind == KindWireGuard {
		l.PrivateKey, l.Port = WGKey{}, uint16(fakeWGPortBase+index)
		if l.MTU == 0 {
			l.MTU = 1420
		}
		return l
	}
	if want.Kind == KindIPIP {
		if l.MTU == 0 {
			l.MTU = 1480
		}
		return l
	}
	if want.Kind == KindUDP {
		if l.MTU == 0 {
			l.MTU = 1472
		}
		return l
	}
	l.Port = normPort(want.Port)
	if l.MTU == 0 {
		l.MTU = 1450
	}
	if l.MAC.IsZero() {
		l.MAC = MAC{0x02, 0, 0, 0, byte(index >> 8), byte(index)}
	}
	return l
}

// setWGPeer adds or updates a peer on a WireGuard device of the simulated
// kernel; an update keeps the peer's session and counters.
func (k *fakeKernel) setWGPeer(p WGPeer) error {
	l, ok := k.t.links[p.Dev]
	switch {
	case !ok:
		return fmt.Errorf("device %s: %w", p.Dev, ErrNoDevice)
	case l.Kind != KindWireGuard:
		return fmt.Errorf("device %s is not a WireGuard device", p.Dev)
	}
	cur := k.t.wgPeers[p.Key()]
	cur.WGPeer = normWGPeer(p)
	k.t.wgPeers[p.Key()] = cur
	return nil
}

// setWGPeers implements kernel: peers are written to (or removed from)
// WireGuard device l one by one.
func (k *fakeKernel) setWGPeers(l instLink, peers []WGPeer, remove bool) []error {
	k.mu.Lock()
	defer k.mu.Unlock()
	errs := make([]error, len(peers))
	for i, p := range peers {
		switch {
		case !k.on(l.Name, l.index):
			errs[i] = errNoPeerDevice(l.Name)
		case remove:
			delete(k.t.wgPeers, p.Key())
		default:
			errs[i] = k.setWGPeer(p)
		}
	}
	return errs
}

// DeleteWGPeer removes a peer behind the Reconciler's back, as `wg set DEV
// peer KEY remove` does. WireGuard announces no peer changes, so
// subscribers are not told: only a full Reconcile notices.
func (f *Fake) DeleteWGPeer(key WGPeerKey) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	delete(f.k.t.wgPeers, key)
}

// AddKernelWGPeer adds or overwrites a peer behind the Reconciler's back
// (unannounced, as DeleteWGPeer).
func (f *Fake) AddKernelWGPeer(p WGPeer) error {
	if err := checkWGPeer(p.Key(), p); err != nil {
		return err
	}
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	return f.k.setWGPeer(p)
}

// SetWGPeerStats sets what a status read reports of a peer's session, as
// traffic would: the time of its latest handshake and its byte counters.
func (f *Fake) SetWGPeerStats(key WGPeerKey, handshake time.Time, rx, tx int64) error {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	p, ok := f.k.t.wgPeers[key]
	if !ok {
		return fmt.Errorf("no wireguard peer %s on %s", key.PublicKey, key.Dev)
	}
	p.handshake, p.rx, p.tx = handshake, rx, tx
	f.k.t.wgPeers[key] = p
	return nil
}

// WireGuard reports the WireGuard device name as Netlink.WireGuard does;
// the Fake's devices are kernel ones. ok is false if there is no such
// WireGuard device.
func (f *Fake) WireGuard(name string) (WGStatus, bool, error) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	l, ok := f.k.t.links[name]
	if !ok || l.Kind != KindWireGuard {
		return WGStatus{}, false, nil
	}
	st := WGStatus{Impl: WGKernel, ListenPort: l.Port}
	if l.PrivateKey != (WGKey{}) {
		st.PublicKey = l.PrivateKey.PublicKey()
	}
	for k, p := range f.k.t.wgPeers {
		if k.Dev != name {
			continue
		}
		st.Peers = append(st.Peers, WGPeerStatus{
			PublicKey: p.PublicKey, Endpoint: p.Endpoint, AllowedIPs: p.Allowed(),
			LatestHandshake: p.handshake, RxBytes: p.rx, TxBytes: p.tx,
		})
	}
	sortPeerStatus(st.Peers)
	return st, true, nil
}

// sortPeerStatus orders peers by public key, so status output is stable.
func sortPeerStatus(ps []WGPeerStatus) {
	slices.SortFunc(ps, func(a, b WGPeerStatus) int { return cmp.Compare(a.PublicKey.String(), b.PublicKey.String()) })
}
