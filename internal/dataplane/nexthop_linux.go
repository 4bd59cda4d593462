package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/nsrun"
)

// Why IPv4 gateway routes go through nexthop objects (Linux ≥ 5.3):
//
// The IPv4 FIB shares one fib_info among routes with identical attributes
// and, on every insert, looks for the one to share by walking a hash
// bucket. The bucket's hash covers protocol, scope, preferred source,
// metric and output device, but not the gateway. Every route of a VXLAN
// fabric has the same device, protocol and metric and a different gateway,
// so all K of them land in one bucket: inserting the K-th compares it
// against the K-1 before it, and installing K routes costs O(K²) kernel
// time. Measured on 6.18: 40 µs per route at 1,000 routes, 82 µs at 5,000
// (0.41 s for the whole set, most of a cold start), and it keeps growing.
// A route that names a nexthop object is hashed by that object's ID
// instead, so each insert is O(1), and the objects themselves live in a
// tree keyed by ID.
//
// Only routes on our own VXLAN devices get objects (pass.ownLink says
// why not those on the underlay). Each gets one of its own (same gateway,
// device and onlink flag the route would carry), created just before the
// route and carrying our route protocol; once the route is deleted the
// object is unused, and is deleted in bulk later (delNexthops). IPv6
// routes, which have no such shared lookup, and blackholes stay plain.
//
// The kernel's route dumps and notifications describe such a route with
// its gateway and device inline as long as net.ipv4.nexthop_compat_mode
// is 1 (the default), which is what lets the rest of this package, and
// tools reading routes, treat it like any other; with compat mode off we
// install plain routes.

// rtaNHID is RTA_NH_ID from <linux/rtnetlink.h>, which x/sys lacks. The
// IDs we allocate are engine.allocNexthop's.
const rtaNHID = 30

// nlNexthop is one nexthop object as read from the kernel.
type nlNexthop struct {
	id      uint32
	ifindex int
	gw      netip.Addr
	onlink  bool
	proto   uint8
}

type nhKey struct {
	ifindex int
	gw      netip.Addr
	onlink  bool
}

// nhMsg is struct nhmsg from <linux/nexthop.h>.
type nhMsg struct {
	family, scope, protocol, resvd uint8
	flags                          uint32
}

func (m *nhMsg) Len() int { return 8 }

func (m *nhMsg) Serialize() []byte {
	b := make([]byte, 8)
	b[0], b[1], b[2], b[3] = m.family, m.scope, m.protocol, m.resvd
	binary.NativeEndian.PutUint32(b[4:], m.flags)
	return b
}

// nexthopRequest builds `ip nexthop add id ID via GW dev IFINDEX [onlink]
// proto 87` (exclusive: it fails rather than replace someone's object).
func nexthopRequest(id uint32, ifindex int, gw netip.Addr, onlink bool) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_NEWNEXTHOP, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	msg := &nhMsg{family: unix.AF_INET, protocol: uint8(RouteProtocol)}
	if onlink {
		msg.flags = unix.RTNH_F_ONLINK
	}
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.NHA_ID, nl.Uint32Attr(id)))
	req.AddData(nl.NewRtAttr(unix.NHA_OIF, nl.Uint32Attr(uint32(ifindex))))
	req.AddData(nl.NewRtAttr(unix.NHA_GATEWAY, gw.AsSlice()))
	return req
}

// nexthopDelRequest builds `ip nexthop del id ID`, which also removes
// every route using the object.
func nexthopDelRequest(id uint32) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_DELNEXTHOP, unix.NLM_F_ACK)
	req.AddData(&nhMsg{family: unix.AF_UNSPEC})
	req.AddData(nl.NewRtAttr(unix.NHA_ID, nl.Uint32Attr(id)))
	return req
}

// dumpNexthops reads every nexthop object in the namespace (IPv4 single
// ones fully; groups and others only by ID, so allocation avoids them).
// On a kernel without nexthop objects it fails with EINVAL or EOPNOTSUPP.
func (n *Netlink) dumpNexthops() ([]nlNexthop, error) {
	return rawDump(n, "nexthops", unix.RTM_GETNEXTHOP, &nhMsg{family: unix.AF_UNSPEC}, unix.RTM_NEWNEXTHOP, parseNexthop)
}

func parseNexthop(b []byte) (nlNexthop, bool) {
	if len(b) < 8 {
		return nlNexthop{}, false
	}
	nh := nlNexthop{proto: b[2], onlink: binary.NativeEndian.Uint32(b[4:8])&unix.RTNH_F_ONLINK != 0}
	attrs, ok := parseAttrs(b[8:])
	if !ok {
		return nlNexthop{}, false
	}
	for _, a := range attrs {
		switch a.typ {
		case unix.NHA_ID:
			if len(a.val) >= 4 {
				nh.id = binary.NativeEndian.Uint32(a.val)
			}
		case unix.NHA_OIF:
			if len(a.val) >= 4 {
				nh.ifindex = int(binary.NativeEndian.Uint32(a.val))
			}
		case unix.NHA_GATEWAY:
			nh.gw, _ = netip.AddrFromSlice(a.val)
			nh.gw = nh.gw.Unmap()
		}
	}
	return nh, nh.id != 0
}

// nexthopsUsable reports whether the kernel has nexthop objects and shows
// routes using them with their gateway inline (see above); why not, when
// it does not.
func (n *Netlink) nexthopsUsable() (bool, string) {
	if _, err := n.dumpNexthops(); err != nil {
		return false, fmt.Sprintf("no nexthop objects (%v)", err)
	}
	v, err := readSysctlIn(n.ns, "/proc/sys/net/ipv4/nexthop_compat_mode")
	switch {
	case errors.Is(err, os.ErrNotExist):
		// Kernels before the sysctl (5.3–5.7) always report inline.
		return true, ""
	case err != nil:
		return false, fmt.Sprintf("cannot read nexthop_compat_mode: %v", err)
	case v != "1":
		return false, "net.ipv4.nexthop_compat_mode is " + v
	}
	return true, ""
}

// readSysctlIn reads a /proc/sys/net file as seen from namespace ns:
// those files show the values of the reading thread's namespace.
func readSysctlIn(ns netns.NsHandle, path string) (string, error) {
	var b []byte
	read := func() error {
		var err error
		b, err = os.ReadFile(path)
		return err
	}
	var err error
	if ns.IsOpen() {
		err = nsrun.Do(ns, read)
	} else {
		err = read()
	}
	return strings.TrimSpace(string(b)), err
}
