package dataplane

import (
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
)

// ErrNoDevice reports that an object names a device that does not exist
// (yet). It fails that object only; the rest of the State is still written.
var ErrNoDevice = errors.New("no such device")

// ErrKernelLacks reports a device kind the kernel cannot create: its
// module is missing (ipip on a kernel built without it).
var ErrKernelLacks = errors.New("the kernel lacks this kind of device")

// defaultVXLANPort is what the kernel uses when IFLA_VXLAN_PORT is not
// given: 8472, the port Linux picked before IANA assigned 4789. It is also
// flannel's default, so Port 0 and 8472 describe the same device.
const defaultVXLANPort = 8472

// normPort maps the kernel default to 0 so values read back from the
// kernel compare equal to declared ones.
func normPort(p uint16) uint16 {
	if p == defaultVXLANPort {
		return 0
	}
	return p
}

// sameIdentity reports whether an existing device configured as have can
// serve as want. These attributes are fixed when the kernel creates the
// device (changelink refuses most of them while it is up), so a difference
// means delete and recreate.
func sameIdentity(want, have Link) bool {
	if want.Kind != have.Kind {
		return false
	}
	switch want.Kind {
	case KindWireGuard:
		return true // everything else is set in place
	case KindIPIP:
		return want.Local == have.Local
	}
	if want.Kind == KindUDP {
		return want.Port == have.Port && want.Local == have.Local // the socket's
	}
	return want.VNI == have.VNI &&
		normPort(want.Port) == normPort(have.Port) &&
		want.Local == have.Local &&
		want.ParentIndex == have.ParentIndex &&
		want.GBP == have.GBP &&
		want.Learning == have.Learning
}

// linkSatisfied reports whether a device with identity have, admin state
// up and global addresses addrs needs no write to become want. A zero MTU,
// MAC, WireGuard listen port or private key in want means "whatever the
// device has".
func linkSatisfied(want, have Link, up bool, addrs []netip.Prefix) bool {
	return sameIdentity(want, have) && up &&
		(want.MTU == 0 || want.MTU == have.MTU) &&
		(want.MAC.IsZero() || want.MAC == have.MAC) &&
		(want.Kind != KindWireGuard || want.Port == 0 || want.Port == have.Port) &&
		(want.PrivateKey == WGKey{} || want.PrivateKey == have.PrivateKey) &&
		(want.TxChecksum == OffloadAsIs || want.TxChecksum == have.TxChecksum) &&
		(!want.Addr.IsValid() || slices.Contains(addrs, want.Addr)) &&
		(!want.Addr2.IsValid() || slices.Contains(addrs, want.Addr2)) &&
		len(staleLinkAddrs(want, addrs)) == 0
}

// staleLinkAddrs returns the global addresses among addrs that a device
// declared as want must not keep: those of Addr's family other than Addr,
// and of Addr2's other than Addr2. A WireGuard device carries only what we
// declare, so there an address of the other family than Addr is stale too
// when Addr2 is unset (a device that carried both families and now carries
// one). A VXLAN device's other family is left alone, as it always was.
func staleLinkAddrs(want Link, addrs []netip.Prefix) []netip.Prefix {
	out := append(staleAddrs(want.Addr, addrs), staleAddrs(want.Addr2, addrs)...)
	if want.Kind == KindWireGuard && want.Addr.IsValid() && !want.Addr2.IsValid() {
		for _, a := range addrs {
			if a.Addr().Is4() != want.Addr.Addr().Is4() {
				out = append(out, a)
			}
		}
	}
	return out
}

// staleAddrs returns the addresses of want's family on the device other
// than want: the device is ours, and a leftover address from an earlier
// lease would make the kernel pick the wrong source for overlay traffic.
func staleAddrs(want netip.Prefix, addrs []netip.Prefix) []netip.Prefix {
	if !want.IsValid() {
		return nil
	}
	var out []netip.Prefix
	for _, a := range addrs {
		if a != want && a.Addr().Is4() == want.Addr().Is4() {
			out = append(out, a)
		}
	}
	return out
}

// isGlobal reports whether p is an address Reconcile manages: IPv6
// link-local addresses belong to the kernel (it generates one per device).
func isGlobal(p netip.Prefix) bool {
	return p.IsValid() && !p.Addr().IsLinkLocalUnicast() && !p.Addr().IsLoopback()
}

// firstAddr is what a State shows as a device's Addr: the first global
// address in address order (one per device is all Reconcile installs).
func firstAddr(addrs []netip.Prefix) netip.Prefix {
	if len(addrs) == 0 {
		return netip.Prefix{}
	}
	s := slices.Clone(addrs)
	slices.SortFunc(s, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return s[0]
}

// withAddrs returns l showing the global addresses addrs as a State does:
// Addr is the first; a WireGuard device, which may carry both families,
// shows the first of the other family as Addr2.
func withAddrs(l Link, addrs []netip.Prefix) Link {
	l.Addr, l.Addr2 = firstAddr(addrs), netip.Prefix{}
	if l.Kind != KindWireGuard || !l.Addr.IsValid() {
		return l
	}
	for _, a := range addrs {
		if a.Addr().Is4() != l.Addr.Addr().Is4() && (!l.Addr2.IsValid() || a.Addr().Less(l.Addr2.Addr())) {
			l.Addr2 = a
		}
	}
	return l
}

// checkLink, checkRoute, checkNeigh and checkFDB reject declared objects
// the kernel would refuse or store under another identity, so a bad entry
// fails alone instead of being rewritten on every pass.
func checkLink(name string, l Link) error {
	switch {
	case name == "" || l.Name != name:
		return fmt.Errorf("link keyed %q is named %q", name, l.Name)
	case l.VNI >= 1<<24:
		return fmt.Errorf("link %s: VNI %d does not fit in 24 bits", name, l.VNI)
	case l.Kind != KindVXLAN && l.Kind != KindWireGuard && l.Kind != KindIPIP && l.Kind != KindUDP:
		return fmt.Errorf("link %s: unknown kind %d", name, l.Kind)
	case l.Kind == KindIPIP && (l.VNI != 0 || l.Port != 0 || l.GBP || l.Learning || l.ParentIndex != 0 || !l.MAC.IsZero() || l.PrivateKey != (WGKey{}) || l.Addr2.IsValid()):
		return fmt.Errorf("link %s: an ipip device has no VNI, port, GBP, learning, parent, MAC, key or second address", name)
	case l.Kind == KindIPIP && (!l.Local.Is4() || (l.Addr.IsValid() && !l.Addr.Addr().Is4())):
		return fmt.Errorf("link %s: an ipip device needs an IPv4 local address and carries IPv4 only", name)
	case l.Addr2.IsValid() && (!l.Addr.IsValid() || l.Addr2.Addr().Is4() == l.Addr.Addr().Is4()):
		return fmt.Errorf("link %s: Addr2 %s is not of the other family than Addr %s", name, l.Addr2, l.Addr)
	case l.Kind == KindWireGuard && (l.VNI != 0 || l.GBP || l.Learning || l.Local.IsValid() || l.ParentIndex != 0 || !l.MAC.IsZero()):
		return fmt.Errorf("link %s: a WireGuard device has no VNI, GBP, learning, local address, parent or MAC", name)
	case l.Kind == KindUDP && (l.VNI != 0 || l.GBP || l.Learning || l.ParentIndex != 0 || !l.MAC.IsZero() || l.PrivateKey != (WGKey{}) || l.Addr2.IsValid()):
		return fmt.Errorf("link %s: a udp device has no VNI, GBP, learning, parent, MAC, private key or second address", name)
	case l.Kind == KindUDP && (l.Port == 0 || (l.Local.IsValid() && !l.Local.Is4())):
		return fmt.Errorf("link %s: a udp device needs a port and an IPv4 local address (or none)", name)
	case l.Kind == KindVXLAN && l.PrivateKey != (WGKey{}):
		return fmt.Errorf("link %s: a VXLAN device has no private key", name)
	}
	return nil
}

func checkRoute(k RouteKey, r Route) error {
	switch {
	case k != r.Key():
		return fmt.Errorf("route keyed %s has destination %s", k.Dst, r.Dst)
	case !r.Dst.IsValid():
		return errors.New("route without a destination")
	case r.Dst != r.Dst.Masked():
		return fmt.Errorf("route %s: destination has host bits set (the kernel would store %s)", r.Dst, r.Dst.Masked())
	case r.Blackhole && (r.Dev != "" || r.Gw.IsValid() || r.OnLink):
		return fmt.Errorf("blackhole route %s: has a device, next hop or onlink flag", r.Dst)
	case r.Blackhole:
	case r.Dev == "":
		return fmt.Errorf("route %s: no device", r.Dst)
	}
	return nil
}

func checkNeigh(k NeighKey, n Neigh) error {
	switch {
	case k != n.Key():
		return fmt.Errorf("neighbour keyed %s dev %s is %s dev %s", k.IP, k.Dev, n.IP, n.Dev)
	case !n.IP.IsValid() || n.Dev == "":
		return fmt.Errorf("neighbour %s dev %q: address and device required", n.IP, n.Dev)
	}
	return nil
}

func checkFDB(k FDBKey, f FDB) error {
	switch {
	case k != f.Key():
		return fmt.Errorf("fdb entry keyed %s is %s", k.MAC, f.MAC)
	case !f.Dst.IsValid() || f.Dev == "":
		return fmt.Errorf("fdb %s dst %s dev %q: destination and device required", f.MAC, f.Dst, f.Dev)
	}
	return nil
}

// entries yields m's entries: all of them (touched nil, a complete diff)
// or only the touched keys that m has (a delta pass). Over desired that is
// what to add; over the index, what to consider for deletion (deleting
// from the index while ranging is safe in both forms).
func entries[K comparable, V any](m Table[K, V], touched map[K]struct{}) iter.Seq2[K, V] {
	if touched == nil {
		return m.All()
	}
	return func(yield func(K, V) bool) {
		for k := range touched {
			if v, ok := m.Get(k); ok && !yield(k, v) {
				return
			}
		}
	}
}

// nonNil returns m, or an empty map for nil: in a Delta, a nil map means
// "no key of this kind touched", whereas entries and takeStale read a nil
// touched set as "every key".
func nonNil[K comparable](m map[K]struct{}) map[K]struct{} {
	if m == nil {
		return map[K]struct{}{}
	}
	return m
}

// linkWrites counts the link writes in c.
func linkWrites(c Changes) int { return c.LinksAdded + c.LinksRemoved + c.LinksUpdated }
