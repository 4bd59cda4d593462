package dataplane

import (
	"log/slog"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// notificationTypes are the messages the subscription dispatches.
var notificationTypes = []uint16{unix.RTM_DELLINK, unix.RTM_NEWLINK, unix.RTM_NEWROUTE, unix.RTM_DELROUTE, unix.RTM_NEWNEIGH, unix.RTM_DELNEIGH}

// fuzzNetlink is a Netlink with an index and no sockets: flannel.1
// (ifindex 3) with a route, a neighbour and an FDB entry on it, a route
// over eth0 (ifindex 2), and eth0 awaiting its connected route.
func fuzzNetlink() *Netlink {
	n := &Netlink{upPending: map[int]bool{2: true}}
	n.engine = newEngine(slog.New(slog.DiscardHandler), n)
	n.idx.links["flannel.1"] = instLink{Link: Link{Name: "flannel.1"}, index: 3, up: true}
	gw := netip.MustParseAddr("10.5.2.0")
	n.idx.routes.set(RouteKey{netip.MustParsePrefix("10.5.2.0/24")}, instRoute{Route: Route{Dst: netip.MustParsePrefix("10.5.2.0/24"), Gw: gw, Dev: "flannel.1", OnLink: true}, ifindex: 3, proto: RouteProtocol})
	n.idx.routes.set(RouteKey{netip.MustParsePrefix("10.5.3.0/24")}, instRoute{Route: Route{Dst: netip.MustParsePrefix("10.5.3.0/24"), Gw: netip.MustParseAddr("192.168.0.3"), Dev: "eth0"}, ifindex: 2, proto: RouteProtocol})
	n.idx.neighs.set(NeighKey{Dev: "flannel.1", IP: gw}, instNeigh{Neigh: Neigh{Dev: "flannel.1", IP: gw, MAC: MAC{2, 0, 0, 0, 0, 2}}, ifindex: 3})
	f := FDB{Dev: "flannel.1", MAC: MAC{2, 0, 0, 0, 0, 2}, Dst: netip.MustParseAddr("192.168.0.2")}
	n.idx.fdb.set(f, instFDB{FDB: f, ifindex: 3})
	return n
}

// FuzzNotification feeds arbitrary bytes to the subscription's decoder
// of each message type, against an index holding objects of ours: it
// must never panic (the kernel's messages are well formed, but a decoder
// that trusts lengths it reads is one kernel change from a crash), and it
// only ever reports drift along with taking something out of the index
// or asking for a full pass.
func FuzzNotification(f *testing.F) {
	dst := &net.IPNet{IP: net.IPv4(10, 5, 2, 0).To4(), Mask: net.CIDRMask(24, 32)}
	route := routeRequest(&netlink.Route{Dst: dst, Gw: net.IPv4(10, 5, 2, 0).To4(), LinkIndex: 3, Protocol: RouteProtocol}, 0, unix.RTM_NEWROUTE, 0).Serialize()
	f.Add(uint8(3), route[unix.NLMSG_HDRLEN:])
	f.Add(uint8(2), route[unix.NLMSG_HDRLEN:])
	link := make([]byte, unix.SizeofIfInfomsg)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index, msg.Change, msg.Flags = 2, unix.IFF_UP, unix.IFF_UP
	copy(link, msg.Serialize())
	f.Add(uint8(1), link)
	f.Add(uint8(0), link)
	// RTM_DELNEIGH of 10.5.2.0 on ifindex 3: struct ndmsg, then NDA_DST.
	f.Add(uint8(5), []byte{unix.AF_INET, 0, 0, 0, 3, 0, 0, 0, 0x80, 0, 0, 0, 8, 0, unix.NDA_DST, 0, 10, 5, 2, 0})
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		n := fuzzNetlink()
		before := n.idx.state().Lines()
		typ := notificationTypes[int(which)%len(notificationTypes)]
		hdr := unix.NlMsghdr{Len: uint32(unix.NLMSG_HDRLEN + len(data)), Type: typ}
		drift := n.notification(typ, hdr, data)
		after := n.idx.state().Lines()
		if drift && len(after) == len(before) && !n.resync.Load() && typ != unix.RTM_NEWROUTE {
			t.Fatalf("type %d: drift reported with the index unchanged and no full pass asked", typ)
		}
		if !drift && len(after) != len(before) {
			t.Fatalf("type %d: index changed (%d -> %d lines) with no drift reported", typ, len(before), len(after))
		}
	})
}

// FuzzParseMAC: what parses is six bytes that read back from their own
// rendering.
func FuzzParseMAC(f *testing.F) {
	for _, s := range []string{"02:00:00:00:00:01", "0e-57-00-00-00-01", "0e57.0000.0001", "02:00:00:00:00:00:00:01", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMAC(s)
		if err != nil {
			return
		}
		if back, err := ParseMAC(m.String()); err != nil || back != m {
			t.Fatalf("ParseMAC(%q) = %s, which reads back as %s, %v", s, m, back, err)
		}
	})
}
