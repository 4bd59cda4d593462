// Package vxlan plans the VXLAN backend.
//
// Design notes. Each host owns one VXLAN device per address family,
// flannel.<VNI> (IPv4 underlay) and flannel-v6.<VNI> (IPv6 underlay), with
// learning off and no L2/L3-miss callouts: every peer is programmed up
// front, which is what makes the table size linear in hosts and the
// dataplane independent of the daemon once written (a restarting daemon
// leaves traffic flowing). The device carries the lease's network address
// as a /32 (/128) so that the kernel has a source address for traffic it
// originates into the overlay.
//
// Per peer the kernel needs three objects, because an L3 route over an L2
// tunnel device has to resolve twice:
//
//	route  peerSubnet via peerSubnet.network dev flannel.N onlink
//	       (onlink: the gateway is not in any subnet on the device)
//	neigh  peerSubnet.network lladdr peerVtepMAC dev flannel.N permanent
//	       (the gateway's MAC, so no ARP is ever sent into the tunnel)
//	fdb    peerVtepMAC dst peerPublicIP dev flannel.N self permanent
//	       (which VTEP to encapsulate towards for that MAC)
//
// With DirectRouting, a peer whose public IP is on the underlay's own
// link is reached without encapsulation: "peerSubnet via peerPublicIP dev
// <underlay>", and no neighbour or FDB entry.
//
// MTU. The network config's Backend.MTU means what it means upstream: the
// MTU of the underlay the overlay is carved from (unset or 0: the chosen
// interface's MTU). The device MTU is that less the outer headers: 50
// bytes over IPv4 (14 Ethernet + 20 IPv4 + 8 UDP + 8 VXLAN) and 70 over
// IPv6 (a 40-byte IPv6 header). Upstream subtracts 50 for both, so its v6
// device gets clamped by the kernel below the FLANNEL_MTU it publishes and
// full-size pod packets are dropped; we keep the correct 70. FLANNEL_MTU
// is the smallest device MTU in use. The kernel refuses a VXLAN device
// MTU above its lower device's MTU less those same 50/70 bytes
// (__vxlan_change_mtu), which CheckUnderlay reports before we try.
package vxlan

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

// Outer header overheads per underlay family.
const (
	OverheadIPv4 = config.VXLANOverheadIPv4
	OverheadIPv6 = config.VXLANOverheadIPv6
)

// Data is the lease's BackendData / BackendV6Data for vxlan, in upstream's
// JSON shape: {"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}.
type Data struct {
	VNI     uint32
	VtepMAC string
}

// EncodeData renders vxlan backend data.
func EncodeData(vni uint32, mac dataplane.MAC) json.RawMessage {
	b, _ := json.Marshal(Data{VNI: vni, VtepMAC: mac.String()}) // cannot fail
	return b
}

// DecodeData parses vxlan backend data and its MAC.
func DecodeData(raw json.RawMessage) (Data, dataplane.MAC, error) {
	var d Data
	if len(raw) == 0 {
		return d, dataplane.MAC{}, fmt.Errorf("missing backend data")
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return d, dataplane.MAC{}, fmt.Errorf("bad backend data: %w", err)
	}
	mac, err := dataplane.ParseMAC(d.VtepMAC)
	if err != nil {
		return d, mac, fmt.Errorf("bad VtepMAC %q: %w", d.VtepMAC, err)
	}
	// A multicast or all-zero MAC would make the kernel flood or drop.
	if mac.IsZero() || mac[0]&1 == 1 {
		return d, mac, fmt.Errorf("VtepMAC %s is not a unicast address", mac)
	}
	return d, mac, nil
}

// DeviceName returns the device name for a VNI and family.
func DeviceName(vni uint32, v6 bool) string {
	if v6 {
		return "flannel-v6." + strconv.FormatUint(uint64(vni), 10)
	}
	return "flannel." + strconv.FormatUint(uint64(vni), 10)
}

// Backend is the vxlan planner for one host.
type Backend struct {
	net      *config.Network
	underlay backend.Underlay
	// MAC4 and MAC6 are our devices' MACs (zero when the family is off).
	mac4, mac6 dataplane.MAC
}

// New returns a vxlan planner. mac4/mac6 are this host's VTEP MACs, kept
// stable across restarts by the caller (reused from the existing device
// or our previous lease).
func New(n *config.Network, u backend.Underlay, mac4, mac6 dataplane.MAC) *Backend {
	return &Backend{net: n, underlay: u, mac4: mac4, mac6: mac6}
}

var _ backend.Backend = (*Backend)(nil)

// Type implements backend.Backend.
func (b *Backend) Type() string { return config.BackendVXLAN }

func (b *Backend) v4() bool { return b.net.EnableIPv4 }
func (b *Backend) v6() bool { return b.net.EnableIPv6 }

// mtu returns the device MTU for a family: the configured underlay MTU
// (default: the interface's) less the outer headers.
func (b *Backend) mtu(v6 bool) int {
	return b.underlayMTU() - overhead(v6)
}

func (b *Backend) underlayMTU() int {
	if b.net.Backend.MTU > 0 {
		return b.net.Backend.MTU
	}
	return b.underlay.MTU
}

func overhead(v6 bool) int {
	if v6 {
		return OverheadIPv6
	}
	return OverheadIPv4
}

// CheckUnderlay reports a device MTU the kernel would refuse over this
// underlay (Backend.MTU above the interface's MTU) or one below its
// family's minimum (68, IPv6's 1280), as a one-line error naming the
// setting to change.
func (b *Backend) CheckUnderlay() error {
	for _, v6 := range []bool{false, true} {
		if v6 && !b.v6() || !v6 && !b.v4() {
			continue
		}
		dev, mtu := DeviceName(b.net.Backend.VNI, v6), b.mtu(v6)
		if limit := b.underlay.MTU - overhead(v6); mtu > limit {
			return &config.FieldError{Field: "Backend.MTU", Reason: fmt.Sprintf("%d leaves %d for %s, above the %d the kernel allows over %s (MTU %d)",
				b.net.Backend.MTU, mtu, dev, limit, b.underlay.Name, b.underlay.MTU)}
		}
		floor, family := 68, "IPv4"
		if v6 {
			floor, family = 1280, "IPv6"
		}
		if mtu >= floor {
			continue
		}
		// A configured MTU too small is caught by config validation; this
		// is the interface's own.
		if b.net.Backend.MTU > 0 {
			return &config.FieldError{Field: "Backend.MTU", Reason: fmt.Sprintf("%d leaves %d for %s, below %s's minimum %d",
				b.net.Backend.MTU, mtu, dev, family, floor)}
		}
		return fmt.Errorf("interface %s: MTU %d leaves %d for %s, below %s's minimum %d; set a larger MTU on %s",
			b.underlay.Name, b.underlay.MTU, mtu, dev, family, floor, b.underlay.Name)
	}
	return nil
}

// MTU is the pod MTU: the smallest device MTU in use, so a pod's packet
// fits whichever family carries it.
func (b *Backend) MTU() int {
	switch {
	case b.v4() && b.v6():
		return min(b.mtu(false), b.mtu(true))
	case b.v6():
		return b.mtu(true)
	default:
		return b.mtu(false)
	}
}

// Attrs returns the lease attributes this host publishes.
func (b *Backend) Attrs() lease.Attrs {
	a := lease.Attrs{BackendType: config.BackendVXLAN}
	if b.v4() {
		a.PublicIP = b.underlay.PublicIP
		a.BackendData = EncodeData(b.net.Backend.VNI, b.mac4)
	}
	if b.v6() {
		a.PublicIPv6 = b.underlay.PublicIPv6
		a.BackendV6Data = EncodeData(b.net.Backend.VNI, b.mac6)
	}
	return a
}

// CheckPeer implements backend.Backend.
func (b *Backend) CheckPeer(self, peer lease.Lease) error {
	if peer.Attrs.BackendType != config.BackendVXLAN {
		return backend.Skipf(backend.ReasonBackendType, "lease %s has backend %q, want %q", peer.Key(), peer.Attrs.BackendType, config.BackendVXLAN)
	}
	if err := backend.CheckPeerSubnets(b.net, self, peer); err != nil {
		return err
	}
	if b.v4() && peer.Subnet.IsValid() {
		if _, _, err := DecodeData(peer.Attrs.BackendData); err != nil {
			return backend.Skipf(backend.ReasonBackendData, "lease %s: %v", peer.Key(), err)
		}
	}
	if b.v6() && peer.IPv6Subnet.IsValid() {
		if _, _, err := DecodeData(peer.Attrs.BackendV6Data); err != nil {
			return backend.Skipf(backend.ReasonBackendData, "lease %s (v6): %v", peer.Key(), err)
		}
	}
	return nil
}

// Plan implements backend.Backend.
func (b *Backend) Plan(self lease.Lease, peers []lease.Lease) *dataplane.State {
	return backend.Compose(b, self, peers)
}

// PlanBase implements backend.Backend: our VXLAN device per family.
func (b *Backend) PlanBase(self lease.Lease) *dataplane.State {
	s := dataplane.NewStateSized(2, 0)
	vni := b.net.Backend.VNI
	if b.v4() {
		s.Links[DeviceName(vni, false)] = b.device(false, self.Subnet)
	}
	if b.v6() {
		s.Links[DeviceName(vni, true)] = b.device(true, self.IPv6Subnet)
	}
	return s
}

// PlanPeer implements backend.Backend. It decodes the peer's backend data
// each time; the daemon calls it once per lease event, not per pass, so
// the JSON that once dominated a pass at thousands of peers is now paid
// once per change.
func (b *Backend) PlanPeer(_, p lease.Lease) dataplane.Objects {
	var o dataplane.Objects
	vni := b.net.Backend.VNI
	if b.v4() && p.Subnet.IsValid() {
		b.planPeer(&o, p.Subnet, p.Attrs.PublicIP, p.Attrs.BackendData, DeviceName(vni, false))
	}
	if b.v6() && p.IPv6Subnet.IsValid() {
		b.planPeer(&o, p.IPv6Subnet, p.Attrs.PublicIPv6, p.Attrs.BackendV6Data, DeviceName(vni, true))
	}
	return o
}

func (b *Backend) device(v6 bool, subnet netip.Prefix) dataplane.VXLAN {
	d := dataplane.VXLAN{
		Name:        DeviceName(b.net.Backend.VNI, v6),
		VNI:         b.net.Backend.VNI,
		Port:        b.net.Backend.Port,
		GBP:         b.net.Backend.GBP,
		Learning:    b.net.Backend.Learning,
		MTU:         b.mtu(v6),
		MAC:         b.mac4,
		Local:       b.underlay.LocalIP,
		ParentIndex: b.underlay.Index,
	}
	if v6 {
		d.MAC, d.Local = b.mac6, b.underlay.LocalIPv6
	}
	if subnet.IsValid() {
		d.Addr = netip.PrefixFrom(subnet.Addr(), subnet.Addr().BitLen())
	}
	return d
}

func (b *Backend) planPeer(s *dataplane.Objects, subnet netip.Prefix, public netip.Addr, data json.RawMessage, dev string) {
	if b.net.Backend.DirectRouting && b.underlay.OnLink(public) {
		s.AddRoute(dataplane.Route{Dst: subnet, Gw: public, Dev: b.underlay.Name})
		return
	}
	_, mac, err := DecodeData(data)
	if err != nil {
		return // CheckPeer rejected it already; planning stays total.
	}
	gw := subnet.Addr()
	s.AddRoute(dataplane.Route{Dst: subnet, Gw: gw, Dev: dev, OnLink: true})
	s.AddNeigh(dataplane.Neigh{Dev: dev, IP: gw, MAC: mac})
	s.AddFDB(dataplane.FDB{Dev: dev, MAC: mac, Dst: public})
}
