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
	"crypto/rand"
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
		// Not wrapped: the parser's error repeats the input, which may
		// be as long as the lease value.
		return d, mac, fmt.Errorf("bad VtepMAC %q", lease.Shorten(d.VtepMAC))
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
	// kept4 and kept6: the MAC came from a surviving device, which peers'
	// tables already name; Resume must not replace it.
	kept4, kept6 bool
	// txCsum is our devices' TX checksum offload (--vxlan-tx-checksum,
	// auto resolved for the running kernel).
	txCsum dataplane.Offload
	// dev4 and dev6 are the devices' names, made once: every peer's
	// objects name them, and one string each beats 20,000 copies.
	dev4, dev6 string
}

// New returns a vxlan planner with the given VTEP MACs (Factory keeps
// them stable across restarts).
func New(n *config.Network, u backend.Underlay, mac4, mac6 dataplane.MAC) *Backend {
	return &Backend{net: n, underlay: u, mac4: mac4, mac6: mac6,
		dev4: DeviceName(n.Backend.VNI, false), dev6: DeviceName(n.Backend.VNI, true)}
}

// Factory implements backend.Factory. The VTEP MACs are kept stable
// across restarts: peers have them in their neighbour and FDB tables, and
// a new one would black-hole traffic to us until every peer saw our
// updated lease. So a surviving device's MAC is reused; without one (a
// reboot) Resume takes it back from our lease; only a new host gets a new,
// random one.
func Factory(env backend.Env) (backend.Backend, error) {
	b := New(env.Network, env.Underlay, dataplane.MAC{}, dataplane.MAC{})
	b.txCsum = dataplane.TxChecksumSetting(env.Options.VXLANTxChecksum, env.KernelRelease)
	// Before the kernel sees it: the kernel would clamp the device MTU at
	// creation and refuse it on every later pass.
	if err := b.CheckUnderlay(); err != nil {
		return nil, err
	}
	var err error
	if b.v4() {
		if b.mac4, b.kept4, err = stableMAC(env.Kernel, DeviceName(b.net.Backend.VNI, false)); err != nil {
			return nil, err
		}
	}
	if b.v6() {
		if b.mac6, b.kept6, err = stableMAC(env.Kernel, DeviceName(b.net.Backend.VNI, true)); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// stableMAC returns dev's MAC if the device exists (kept), else a new
// locally administered unicast one.
func stableMAC(k backend.Kernel, dev string) (mac dataplane.MAC, kept bool, err error) {
	if l, ok, err := k.LinkByName(dev); err != nil {
		return mac, false, fmt.Errorf("look up %s: %w", dev, err)
	} else if ok && l.Kind == dataplane.KindVXLAN && !l.MAC.IsZero() {
		return l.MAC, true, nil
	}
	if _, err := rand.Read(mac[:]); err != nil {
		return mac, false, fmt.Errorf("random MAC: %w", err)
	}
	mac[0] = mac[0]&^1 | 2
	return mac, false, nil
}

// Resume implements backend.Backend: the devices are gone (a reboot) but
// our lease survived, so the MACs come back from the lease and peers'
// tables stay right.
func (b *Backend) Resume(existing lease.Lease) lease.Attrs {
	if _, m, err := DecodeData(existing.Attrs.BackendData); err == nil && !b.kept4 && b.v4() {
		b.mac4 = m
	}
	if _, m, err := DecodeData(existing.Attrs.BackendV6Data); err == nil && !b.kept6 && b.v6() {
		b.mac6 = m
	}
	return b.Attrs()
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

// Peer implements backend.Backend: per family, the peer's backend data
// is decoded once and its route, neighbour and FDB entry planned.
func (b *Backend) Peer(self, p lease.Lease) (dataplane.Objects, error) {
	var o dataplane.Objects
	if err := backend.CheckPeer(b.net, config.BackendVXLAN, self, p); err != nil {
		return o, err
	}
	if b.v4() && p.Subnet.IsValid() {
		if err := b.planPeer(&o, p.Subnet, p.Attrs.PublicIP, p.Attrs.BackendData, b.dev4); err != nil {
			return dataplane.Objects{}, backend.Skipf(backend.ReasonBackendData, "lease %s: %v", p.Key(), err)
		}
	}
	if b.v6() && p.IPv6Subnet.IsValid() {
		if err := b.planPeer(&o, p.IPv6Subnet, p.Attrs.PublicIPv6, p.Attrs.BackendV6Data, b.dev6); err != nil {
			return dataplane.Objects{}, backend.Skipf(backend.ReasonBackendData, "lease %s (v6): %v", p.Key(), err)
		}
	}
	return o, nil
}

// ProbeAddr implements backend.Backend: the peer's address on its
// flannel.<VNI> (the gateway our route names), reached through the
// tunnel, or over the underlay with DirectRouting.
func (b *Backend) ProbeAddr(p lease.Lease) netip.Addr { return backend.OverlayAddr(b.net, p) }

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

func (b *Backend) device(v6 bool, subnet netip.Prefix) dataplane.Link {
	d := dataplane.Link{
		Name:        DeviceName(b.net.Backend.VNI, v6),
		VNI:         b.net.Backend.VNI,
		Port:        b.net.Backend.Port,
		GBP:         b.net.Backend.GBP,
		Learning:    b.net.Backend.Learning,
		MTU:         b.mtu(v6),
		MAC:         b.mac4,
		Local:       b.underlay.LocalIP,
		ParentIndex: b.underlay.Index,
		TxChecksum:  b.txCsum,
	}
	if v6 {
		d.MAC, d.Local = b.mac6, b.underlay.LocalIPv6
	}
	if subnet.IsValid() {
		d.Addr = netip.PrefixFrom(subnet.Addr(), subnet.Addr().BitLen())
	}
	return d
}

// planPeer plans one family of a peer. The backend data is checked even
// when DirectRouting needs none of it, so a peer's lease is accepted or
// refused the same way on every host.
func (b *Backend) planPeer(s *dataplane.Objects, subnet netip.Prefix, public netip.Addr, data json.RawMessage, dev string) error {
	_, mac, err := DecodeData(data)
	if err != nil {
		return err
	}
	if b.net.Backend.DirectRouting && b.underlay.OnLink(public) {
		s.AddRoute(dataplane.Route{Dst: subnet, Gw: public, Dev: b.underlay.Name})
		return nil
	}
	gw := subnet.Addr()
	s.AddRoute(dataplane.Route{Dst: subnet, Gw: gw, Dev: dev, OnLink: true})
	s.AddNeigh(dataplane.Neigh{Dev: dev, IP: gw, MAC: mac})
	s.AddFDB(dataplane.FDB{Dev: dev, MAC: mac, Dst: public})
	return nil
}
