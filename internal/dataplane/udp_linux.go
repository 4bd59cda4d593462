package dataplane

import (
	"errors"
	"fmt"
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

// reapUDP reports the devices that ended on their own (their netdev was
// deleted), for the engine to forget: this pass makes them again.
func (n *Netlink) reapUDP() []instLink {
	u := n.udp
	u.mu.Lock()
	var gone []instLink
	for name, s := range u.devs {
		if isDone(s.dev.Done()) {
			gone = append(gone, instLink{Link: Link{Kind: KindUDP, Name: name}})
			delete(u.devs, name)
		}
	}
	u.mu.Unlock()
	for _, l := range gone {
		n.log.Warn("udp device ended; making it again", "link", l.Name)
	}
	return gone
}

// udpLink returns the index entry for a TUN that is one of our served
// udp devices.
func (n *Netlink) udpLink(a *netlink.LinkAttrs) (instLink, bool) {
	var spec UDPSpec
	if s, ok := n.udp.served(a.Name); ok {
		spec = s.spec
	} else if v, ok := n.udp.view[a.Name]; ok {
		spec = UDPSpec{Name: a.Name, Local: v.Local, Port: v.Port}
	} else {
		return instLink{}, false
	}
	return instLink{
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
func (n *Netlink) readUDP(x *instIndex) {
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

// setUDPPeers implements kernel: one Update of our device dev's table.
func (n *Netlink) setUDPPeers(dev string, set map[netip.Prefix]netip.AddrPort, del []netip.Prefix) error {
	s, ok := n.udp.served(dev)
	if !ok {
		return ErrNoDevice
	}
	return s.dev.Update(set, del)
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
