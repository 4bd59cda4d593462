package dataplane

import (
	"fmt"
	"net/netip"

	"github.com/weft-net/weft/internal/dataplane/udptun"
)

// udp devices (Link.Kind KindUDP): the udp backend's TUN device, flannel0,
// whose packets a forwarder in this process (package udptun) carries to
// the peers over UDP. Link.Port is the UDP port it listens on and
// Link.Local the address its socket is bound to (invalid: any); both are
// the device's identity, so changing either makes a new device. MTU,
// address and up state are set through netlink as for any device. The
// forwarder's table is declared as UDPPeers, one per peer subnet, which
// the dataplane writes into the device and reads back from it.
//
// Such a device is made by the creator given with the UDP option and
// lives as long as it is desired and the process runs: its TUN is not
// persistent, so a restarted daemon makes a new one (as upstream does)
// and refills its table in its first pass. A TUN of our name that this
// process does not serve is someone else's dead device: it is replaced.

// UDPPeer is one entry of a udp device's forwarding table: packets to
// Subnet are sent, as UDP payload, to Endpoint.
type UDPPeer struct {
	Dev      string
	Subnet   netip.Prefix
	Endpoint netip.AddrPort
}

// UDPPeerKey identifies a forwarding entry: one per device and subnet.
type UDPPeerKey struct {
	Dev    string
	Subnet netip.Prefix
}

// Key returns p's identity.
func (p UDPPeer) Key() UDPPeerKey { return UDPPeerKey{p.Dev, p.Subnet} }

// String renders p for State.Lines.
func (p UDPPeer) String() string {
	return fmt.Sprintf("%s peer %s endpoint %s", p.Dev, p.Subnet, p.Endpoint)
}

// AddUDPPeer inserts p.
func (s *State) AddUDPPeer(p UDPPeer) { s.UDPPeers[p.Key()] = p }

// AddUDPPeer appends p.
func (o *Objects) AddUDPPeer(p UDPPeer) { o.UDPPeers = append(o.UDPPeers, p) }

func checkUDPPeer(k UDPPeerKey, p UDPPeer) error {
	switch {
	case p.Key() != k:
		return fmt.Errorf("udp peer keyed %s/%s is %s/%s", k.Dev, k.Subnet, p.Dev, p.Subnet)
	case !p.Subnet.IsValid() || !p.Subnet.Addr().Is4() || p.Subnet != p.Subnet.Masked():
		return fmt.Errorf("udp peer %s on %s: the subnet is not a masked IPv4 prefix", p.Subnet, p.Dev)
	case !p.Endpoint.Addr().Is4() || p.Endpoint.Port() == 0:
		return fmt.Errorf("udp peer %s on %s: endpoint %s is not an IPv4 address and port", p.Subnet, p.Dev, p.Endpoint)
	}
	return nil
}

// UDPSpec is what a udp device is made with.
type UDPSpec struct {
	Name  string
	Local netip.Addr
	Port  uint16
}

// UDPDevice is a udp device this process serves (package udptun makes
// them): its forwarding table, written in one Update per pass and read
// back whole by Peers; Close ends it and deletes its netdev; Done is
// closed once it has ended, by Close or on its own (its netdev was
// deleted).
type UDPDevice interface {
	Update(set map[netip.Prefix]netip.AddrPort, del []netip.Prefix) error
	Peers() map[netip.Prefix]netip.AddrPort
	Stats() UDPStats
	Close() error
	Done() <-chan struct{}
}

// UDPStats counts what a udp device forwarded and dropped.
type UDPStats = udptun.Stats

// UDPStatus is what `weft status` and the metrics show of a udp device:
// its socket, its table as the forwarder holds it, and its counters.
type UDPStatus struct {
	Name  string     `json:"name"`
	Local netip.Addr `json:"local,omitzero"`
	Port  uint16     `json:"port"`
	// Peers are the forwarder's table, by subnet.
	Peers []UDPPeer `json:"peers"`
	Stats UDPStats  `json:"stats"`
}
