package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/nsrun"
)

// WireGuard peers in Netlink.
//
// The index holds the peers of our WireGuard devices as the device
// reports them. They are written through wgctrl, one ConfigureDevice per
// device and phase (never ReplacePeers, which would drop every session the
// write does not name): adds and updates right after the links, before
// the routes that send traffic into the device; removals after the route
// deletions. Should a device refuse a batch, each of its peers is written
// alone, so a bad one fails by itself.
//
// WireGuard announces no peer changes (there is no notification for `wg
// set … remove`), so Subscribe never sees drift on a peer: the periodic
// full pass, which reads every peer of our devices back, repairs it. It
// also resets an endpoint the device roamed to (WireGuard follows a peer
// whose packets come from a new address) to the lease's: the declared
// endpoint is where the peer says it listens.

func peerFromWG(dev string, p wgtypes.Peer) instWGPeer {
	w := WGPeer{
		Dev: dev, PublicKey: p.PublicKey, PSK: p.PresharedKey,
		Keepalive: uint16(min(p.PersistentKeepaliveInterval/time.Second, 1<<16-1)),
	}
	if p.Endpoint != nil {
		w.Endpoint = p.Endpoint.AddrPort()
	}
	var more bool
	n := 0
	for _, ipn := range p.AllowedIPs {
		pf, ok := prefixFromIPNet(&ipn)
		if !ok || n == len(w.AllowedIPs) {
			more = true
			continue
		}
		w.AllowedIPs[n] = pf
		n++
	}
	return instWGPeer{normWGPeer(w), more}
}

// peerConfig is the write that makes the device's peer p.PublicKey p (or,
// with remove, removes it). Every attribute is given, so an update
// overwrites whatever the device had: the allowed IPs replace the old
// ones, a zero preshared key removes one, a zero keepalive turns it off.
func peerConfig(p WGPeer, remove bool) wgtypes.PeerConfig {
	if remove {
		return wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true}
	}
	psk := p.PSK
	keepalive := time.Duration(p.Keepalive) * time.Second
	allowed := make([]net.IPNet, 0, len(p.AllowedIPs))
	for _, a := range p.Allowed() {
		allowed = append(allowed, *ipNet(a.Masked()))
	}
	return wgtypes.PeerConfig{
		PublicKey:                   p.PublicKey,
		Endpoint:                    net.UDPAddrFromAddrPort(p.Endpoint),
		PresharedKey:                &psk,
		PersistentKeepaliveInterval: &keepalive,
		ReplaceAllowedIPs:           true,
		AllowedIPs:                  allowed,
	}
}

// readWG completes a full read: the listen port, private key and peers of
// the WireGuard devices in x.
func (n *Netlink) readWG(x *instIndex) error {
	for name, l := range x.links {
		if l.Kind != KindWireGuard {
			continue
		}
		d, err := n.readWGLink(&l)
		if err != nil {
			return err
		}
		x.links[name] = l
		for _, p := range d.Peers {
			wp := peerFromWG(name, p)
			x.wgPeers[wp.Key()] = wp
		}
	}
	return nil
}

// setWGPeers implements kernel: it writes peers to device l in one
// ConfigureDevice and returns each one's outcome; if the device refuses
// the batch, each peer is written alone to find out which failed. Peers
// written to a device this process just created are greeted once the
// pass's routes are in (settled).
func (n *Netlink) setWGPeers(l instLink, peers []WGPeer, remove bool) []error {
	dev, kernel := l.Name, !l.user
	cfgs := make([]wgtypes.PeerConfig, len(peers))
	for i, pr := range peers {
		cfgs[i] = peerConfig(pr, remove)
	}
	errs := make([]error, len(peers))
	err := n.configureWG(dev, kernel, wgtypes.Config{Peers: cfgs})
	if err == nil || len(peers) == 1 || errors.Is(err, os.ErrNotExist) {
		for i := range errs {
			errs[i] = err
		}
	} else {
		for i := range cfgs {
			errs[i] = n.configureWG(dev, kernel, wgtypes.Config{Peers: cfgs[i : i+1]})
		}
	}
	if !remove && n.wg.fresh[dev] {
		delete(n.wg.fresh, dev) // greeted below, or never to be
		for i, pr := range peers {
			if a := pr.Allowed(); errs[i] == nil && len(a) > 0 {
				n.greet = append(n.greet, a[0].Addr())
			}
		}
	}
	return errs
}

// WireGuard reports the WireGuard device name in n's namespace — a kernel
// one, or a userspace one served by any process (so `weft status` can read
// the daemon's) — for `weft status` and metrics; ok is false if there is
// no such WireGuard device. Keys other than public ones are never
// returned.
func (n *Netlink) WireGuard(name string) (WGStatus, bool, error) {
	link, err := n.h.LinkByName(name)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return WGStatus{}, false, nil
	}
	if err != nil {
		return WGStatus{}, false, fmt.Errorf("look up link %s: %w", name, err)
	}
	l, ok := n.ourLink(link)
	if !ok || l.Kind != KindWireGuard {
		return WGStatus{}, false, nil
	}
	d, err := n.wgDevice(name, !l.user)
	if errors.Is(err, os.ErrNotExist) {
		return WGStatus{}, false, nil // gone meanwhile
	}
	if err != nil {
		return WGStatus{}, false, err
	}
	st := WGStatus{Impl: WGKernel, ListenPort: uint16(d.ListenPort)}
	if l.user {
		st.Impl = WGUserspace
	}
	if d.PrivateKey != (WGKey{}) {
		st.PublicKey = d.PrivateKey.PublicKey()
	}
	for _, p := range d.Peers {
		ps := WGPeerStatus{
			PublicKey: p.PublicKey, LatestHandshake: p.LastHandshakeTime,
			RxBytes: p.ReceiveBytes, TxBytes: p.TransmitBytes,
		}
		if p.Endpoint != nil {
			ap := p.Endpoint.AddrPort()
			ps.Endpoint = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		for _, ipn := range p.AllowedIPs {
			if pf, ok := prefixFromIPNet(&ipn); ok {
				ps.AllowedIPs = append(ps.AllowedIPs, pf)
			}
		}
		st.Peers = append(st.Peers, ps)
	}
	sortPeerStatus(st.Peers)
	return st, true, nil
}

// settled implements kernel: it sends one empty UDP datagram (to the discard port) through
// our WireGuard devices to each peer written on a device this pass
// created, so that the device starts a handshake with every peer at once.
//
// Why: a new device — a userspace one after a daemon restart, or a kernel
// one after a reboot — has no sessions, but its peers still hold their
// sessions with our old device and keep encrypting to them; we drop what
// they send, and a peer only gives up on a session after 15 s without an
// answer (WireGuard's keepalive plus rekey timeouts). Our handshake
// replaces their session at once. The datagram itself reaches the peer's
// own overlay address and is discarded there.
func (n *Netlink) settled() {
	if len(n.greet) == 0 {
		return
	}
	addrs := n.greet
	n.greet = nil
	send := func() error {
		var errs []error
		for _, a := range addrs {
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 9)))
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if _, err := c.Write(nil); err != nil {
				errs = append(errs, err)
			}
			c.Close()
		}
		return errors.Join(errs...)
	}
	var err error
	if n.ns.IsOpen() {
		err = nsrun.Do(n.ns, send)
	} else {
		err = send()
	}
	// Only a courtesy: without it, sessions recover on WireGuard's own
	// timers.
	if err != nil {
		n.log.Debug("greeting new wireguard peers", "peers", len(addrs), "err", err)
	} else {
		n.log.Debug("greeted new wireguard peers", "peers", len(addrs))
	}
}
