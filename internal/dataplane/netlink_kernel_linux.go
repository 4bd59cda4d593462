package dataplane

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Netlink's side of the kernel seam (kernel.go) for devices and for
// object requests: the full read is in netlink_read_linux.go, the
// batching of requests into datagrams in batch_linux.go, WireGuard and
// udp devices in wireguard*_linux.go and udp_linux.go.

var _ kernel = (*Netlink)(nil)

// nexthops implements kernel.
func (n *Netlink) nexthops() bool { return n.useNH }

// ifindex implements kernel.
func (n *Netlink) ifindex(dev string) (int, error) {
	link, err := n.h.LinkByName(dev)
	switch {
	case errors.As(err, &netlink.LinkNotFoundError{}):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("look up device %s: %w", dev, err)
	}
	return link.Attrs().Index, nil
}

// exec implements kernel: the requests go out in batches (nlWriter), and
// an ack that got lost leaves the kernel's state unknown.
func (n *Netlink) exec(reqs []request) ([]error, bool) { return n.w.exec(reqs) }

// reap implements kernel: the userspace devices whose process side ended.
func (n *Netlink) reap() []instLink { return append(n.reapWG(), n.reapUDP()...) }

// setLink implements kernel.
func (n *Netlink) setLink(l instLink, w linkWrite) error {
	h := n.h
	link := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: l.index, Name: l.Name}}
	switch w.op {
	case linkMTU:
		return h.LinkSetMTU(link, w.mtu)
	case linkMAC:
		return h.LinkSetHardwareAddr(link, net.HardwareAddr(w.mac[:]))
	case linkAddrAdd:
		addr := &netlink.Addr{IPNet: ipNet(w.addr)}
		if w.addr.Addr().Is6() {
			// The address is unique by lease construction, and duplicate
			// address detection on an overlay without a default FDB
			// destination reaches no one: it would only keep the address
			// tentative (unusable as a source) for a second.
			addr.Flags = unix.IFA_F_NODAD
		}
		return h.AddrAdd(link, addr)
	case linkAddrDel:
		return h.AddrDel(link, &netlink.Addr{IPNet: ipNet(w.addr)})
	case linkUp:
		return h.LinkSetUp(link)
	case linkWG:
		return n.setWG(l, w)
	case linkTxChecksum:
		return n.setTxChecksum(l.Name, w.csum)
	}
	return fmt.Errorf("link %s: unknown write %d", l.Name, w.op)
}

func newVxlan(want Link) *netlink.Vxlan {
	v := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: want.Name, MTU: want.MTU},
		VxlanId:      int(want.VNI),
		VtepDevIndex: want.ParentIndex,
		Port:         int(want.Port), // 0: not sent, the kernel default applies
		Learning:     want.Learning,
		GBP:          want.GBP,
	}
	if !want.MAC.IsZero() {
		v.HardwareAddr = net.HardwareAddr(want.MAC[:])
	}
	if want.Local.IsValid() {
		v.SrcAddr = want.Local.AsSlice()
	}
	return v
}
