package dataplane

import (
	"errors"
	"fmt"
	"iter"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
)

// udp devices and their forwarding tables in Netlink (see udp.go). The
// index holds each served device's table as last written or read; a full
// pass reads the tables back from the devices, so an entry lost in a
// device (it cannot be, short of a new device) is repaired like any drift.

// UDP sets how Netlink makes udp devices: create makes one in Netlink's
// namespace (udptun.Create; nil: the udp backend is unavailable).
func UDP(create func(UDPSpec) (UDPDevice, error)) NetlinkOption {
	return func(o *netlinkOptions) { o.udpCreate = create }
}

// udpState is Netlink's udp side: the devices it serves.
type udpState struct {
	create func(UDPSpec) (UDPDevice, error)
	mu     sync.Mutex
	devs   map[string]udpServed
	// view are devices another process serves (UDPView).
	view map[string]UDPStatus
}

type udpServed struct {
	dev  UDPDevice
	spec UDPSpec
}

func newUDPState(o netlinkOptions) *udpState {
	u := &udpState{create: o.udpCreate, devs: map[string]udpServed{}, view: map[string]UDPStatus{}}
	for _, d := range o.udpView {
		u.view[d.Name] = d
	}
	return u
}

// served returns our running device name.
func (u *udpState) served(name string) (udpServed, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	s, ok := u.devs[name]
	if !ok || isDone(s.dev.Done()) {
		return udpServed{}, false
	}
	return s, true
}

func isDone(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// closeUDP ends the udp devices we serve.
func (n *Netlink) closeUDP() {
	u := n.udp
	u.mu.Lock()
	devs := u.devs
	u.devs = map[string]udpServed{}
	u.mu.Unlock()
	for name, s := range devs {
		if err := s.dev.Close(); err != nil {
			n.log.Warn("close udp device", "link", name, "err", err)
		}
	}
}

// reapUDP forgets the devices that ended on their own (their netdev was
// deleted): this pass makes them again.
func (n *Netlink) reapUDP() {
	u := n.udp
	u.mu.Lock()
	var gone []string
	for name, s := range u.devs {
		if isDone(s.dev.Done()) {
			gone = append(gone, name)
			delete(u.devs, name)
		}
	}
	u.mu.Unlock()
	for _, name := range gone {
		if l, ok := lookup(n, func(x *nlIndex) map[string]nlLink { return x.links }, name); ok && l.Kind == KindUDP {
			n.forgetLink(name)
		}
		n.log.Warn("udp device ended; making it again", "link", name)
	}
}

// udpLink returns the index entry for a TUN that is one of our served
// udp devices.
func (n *Netlink) udpLink(a *netlink.LinkAttrs) (nlLink, bool) {
	var spec UDPSpec
	if s, ok := n.udp.served(a.Name); ok {
		spec = s.spec
	} else if v, ok := n.udp.view[a.Name]; ok {
		spec = UDPSpec{Name: a.Name, Local: v.Local, Port: v.Port}
	} else {
		return nlLink{}, false
	}
	return nlLink{
		Link:  Link{Kind: KindUDP, Name: a.Name, MTU: a.MTU, Port: spec.Port, Local: spec.Local},
		index: a.Index,
		up:    a.Flags&net.FlagUp != 0,
	}, true
}

// addUDPLink makes a udp device for want.
func (n *Netlink) addUDPLink(want Link) error {
	u := n.udp
	if u.create == nil {
		return fmt.Errorf("no udp device implementation: %w", errors.ErrUnsupported)
	}
	u.mu.Lock()
	old, had := u.devs[want.Name]
	delete(u.devs, want.Name)
	u.mu.Unlock()
	if had {
		_ = old.dev.Close()
	}
	spec := UDPSpec{Name: want.Name, Local: want.Local, Port: want.Port}
	d, err := u.create(spec)
	if err != nil {
		return err
	}
	u.mu.Lock()
	u.devs[want.Name] = udpServed{dev: d, spec: spec}
	u.mu.Unlock()
	n.log.Info("created link", "link", want.Name, "kind", "udp", "local", want.Local, "port", want.Port)
	return nil
}

// removeUDPLink closes our device name (which deletes its TUN); ok is
// false when we do not serve it.
func (n *Netlink) removeUDPLink(name string) (ok bool, err error) {
	n.udp.mu.Lock()
	s, had := n.udp.devs[name]
	delete(n.udp.devs, name)
	n.udp.mu.Unlock()
	if !had {
		return false, nil
	}
	if err := s.dev.Close(); err != nil {
		return true, fmt.Errorf("close udp device: %w", err)
	}
	return true, nil
}

// readUDP completes a full read: the tables of the udp devices in x.
func (n *Netlink) readUDP(x *nlIndex) {
	for name, l := range x.links {
		if l.Kind != KindUDP {
			continue
		}
		if s, ok := n.udp.served(name); ok {
			for subnet, ep := range s.dev.Peers() {
				p := UDPPeer{Dev: name, Subnet: subnet, Endpoint: ep}
				x.udpPeers[p.Key()] = p
			}
		} else if v, ok := n.udp.view[name]; ok {
			for _, p := range v.Peers {
				x.udpPeers[p.Key()] = p
			}
		}
	}
}

func udpPeers(x *nlIndex) map[UDPPeerKey]UDPPeer { return x.udpPeers }

// addUDPPeers writes the desired entries the index does not have as
// declared: one Update per device.
func (p *pass) addUDPPeers(desired iter.Seq2[UDPPeerKey, UDPPeer]) {
	n := p.n
	byDev := map[string][]UDPPeer{}
	for k, pr := range desired {
		if err := checkUDPPeer(k, pr); err != nil {
			p.fail(err)
			continue
		}
		if old, had := lookup(n, udpPeers, k); had && old == pr {
			continue
		}
		byDev[pr.Dev] = append(byDev[pr.Dev], pr)
	}
	for _, dev := range slices.Sorted(maps.Keys(byDev)) {
		peers := byDev[dev]
		s, ok := n.udp.served(dev)
		if !ok {
			p.fail(fmt.Errorf("set %d udp peers dev %s: %w", len(peers), dev, ErrNoDevice))
			continue
		}
		set := make(map[netip.Prefix]netip.AddrPort, len(peers))
		for _, pr := range peers {
			set[pr.Subnet] = pr.Endpoint
		}
		if err := s.dev.Update(set, nil); err != nil {
			p.fail(fmt.Errorf("set %d udp peers dev %s: %w", len(peers), dev, err))
			continue
		}
		n.withIndex(func(x *nlIndex) {
			for _, pr := range peers {
				x.udpPeers[pr.Key()] = pr
			}
		})
		p.changes.UDPPeersAdded += len(peers)
	}
}

// delUDPPeers removes the entries desired lacks (in a delta pass, only
// touched ones), except on devices about to be deleted.
func (p *pass) delUDPPeers(desired *State, gone map[string]bool, touched map[UDPPeerKey]struct{}) {
	n := p.n
	stale := takeStale(n, udpPeers,
		func(k UDPPeerKey) bool { _, ok := desired.UDPPeers[k]; return ok },
		func(v UDPPeer) string { return v.Dev }, gone, touched)
	byDev := map[string][]UDPPeer{}
	for _, v := range stale {
		byDev[v.Dev] = append(byDev[v.Dev], v)
	}
	for _, dev := range slices.Sorted(maps.Keys(byDev)) {
		olds := byDev[dev]
		s, ok := n.udp.served(dev)
		if !ok {
			continue // the device is gone, and its table with it
		}
		del := make([]netip.Prefix, len(olds))
		for i, v := range olds {
			del[i] = v.Subnet
		}
		if err := s.dev.Update(nil, del); err != nil {
			n.withIndex(func(x *nlIndex) {
				for _, v := range olds {
					x.udpPeers[v.Key()] = v
				}
			})
			p.fail(fmt.Errorf("remove %d udp peers dev %s: %w", len(olds), dev, err))
			continue
		}
		p.changes.UDPPeersRemoved += len(olds)
	}
}

// UDPView makes a Netlink that serves no udp devices (weft status) see
// devs, served by another process (the daemon, which reported them), as
// its own: their TUNs are our links, with the reported socket and table.
func UDPView(devs []UDPStatus) NetlinkOption {
	return func(o *netlinkOptions) { o.udpView = devs }
}

// UDP reports the udp devices n serves, by name.
func (n *Netlink) UDP() []UDPStatus {
	n.udp.mu.Lock()
	devs := maps.Clone(n.udp.devs)
	n.udp.mu.Unlock()
	var out []UDPStatus
	for _, name := range slices.Sorted(maps.Keys(devs)) {
		s := devs[name]
		if isDone(s.dev.Done()) {
			continue
		}
		st := UDPStatus{Name: name, Local: s.spec.Local, Port: s.spec.Port, Stats: s.dev.Stats()}
		for subnet, ep := range s.dev.Peers() {
			st.Peers = append(st.Peers, UDPPeer{Dev: name, Subnet: subnet, Endpoint: ep})
		}
		slices.SortFunc(st.Peers, func(a, b UDPPeer) int { return comparePrefix(a.Subnet, b.Subnet) })
		out = append(out, st)
	}
	return out
}
