// Package dataplane is the only package that talks to the kernel (through
// github.com/vishvananda/netlink, and wgctrl for WireGuard). It takes a
// declared State — VXLAN and WireGuard devices, routes, permanent
// neighbours, FDB entries and WireGuard peers — and reconciles
// the kernel to it, writing only the difference and adding before it
// deletes, so running the same State twice writes nothing and a restart
// that finds the kernel already right disturbs no traffic.
//
// Every object is keyed by its identity (a route by destination, a
// neighbour by device+IP, an FDB entry by device+MAC+destination, a
// WireGuard peer by device+public key), so the
// diff is map lookups. Every object we install is recognisable as ours:
// it lives on a device we own, or (routes on shared devices, as host-gw
// installs) carries our route protocol number RouteProtocol. Garbage
// collection never touches anything else.
package dataplane

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
)

// RouteProtocol marks routes weft installs (rtm_protocol). Upstream
// flannel uses the kernel's default (boot), so its routes cannot be told
// apart from an administrator's; ours can, which makes garbage collection
// of routes on shared devices safe.
const RouteProtocol = 0x57 // 87, unassigned in /etc/iproute2/rt_protos

// MAC is a comparable Ethernet address.
type MAC [6]byte

// ParseMAC parses "aa:bb:cc:dd:ee:ff".
func ParseMAC(s string) (MAC, error) {
	hw, err := net.ParseMAC(s)
	if err != nil {
		return MAC{}, err
	}
	if len(hw) != 6 {
		return MAC{}, fmt.Errorf("%q is not a 6-byte Ethernet address", s)
	}
	return MAC(hw), nil
}

func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// IsZero reports whether m is all zeros.
func (m MAC) IsZero() bool { return m == MAC{} }

// Link is a device we own: a VXLAN device (the zero Kind) or a WireGuard
// device. Fields that do not apply to a kind are zero.
type Link struct {
	Kind LinkKind
	Name string
	VNI  uint32
	// Port is VXLAN's UDP destination port (0 means the kernel default,
	// 8472), or a WireGuard device's listen port.
	Port     uint16
	GBP      bool
	Learning bool
	MTU      int
	MAC      MAC
	// Local is the underlay source address (IPv4 or IPv6).
	Local netip.Addr
	// ParentIndex is the underlay device's ifindex (0: none).
	ParentIndex int
	// Addr is the address assigned to the device (the lease's network
	// address as /32 or /128). Invalid means none.
	Addr netip.Prefix
	// Addr2 is a second address, of the other family than Addr: a single
	// WireGuard device carrying both families (wireguard Mode auto, ipv4
	// or ipv6 in a dual-stack network). Invalid means none.
	Addr2 netip.Prefix
	// PrivateKey is a WireGuard device's private key (zero: leave it as
	// it is). Lines shows its public key only.
	PrivateKey WGKey
	// TxChecksum is a VXLAN device's TX checksum offload
	// (TxChecksumFeature): OffloadAsIs leaves it as the kernel made it.
	// Lines does not show it; Dump does not read it.
	TxChecksum Offload
}

// Route is a route in the main table: unicast through Dev, or, with
// Blackhole set, a blackhole route (Dev and Gw empty).
type Route struct {
	Dst netip.Prefix
	// Gw is the next hop; invalid for a device route.
	Gw netip.Addr
	// Dev is the output device's name.
	Dev    string
	OnLink bool
	// Blackhole makes the kernel drop packets to Dst (RTN_BLACKHOLE). It
	// is installed with BlackholeMetric, so it only ever catches what no
	// other route to Dst takes.
	Blackhole bool
}

// BlackholeMetric is the metric (route priority) of blackhole routes: the
// largest the kernel stores, so any other route to the same prefix wins.
// Above all that is the connected route the kernel derives from a CNI
// bridge's address (metric 0 for IPv4, 256 for IPv6): while the bridge
// holds the subnet, local pods are reached through it, and the lookup
// falls through to the blackhole only once that route is gone (no bridge,
// or the bridge went down).
const BlackholeMetric uint32 = 1<<32 - 1

// String renders r as `ip route` arguments.
func (r Route) String() string {
	if r.Blackhole {
		return "blackhole " + r.Dst.String()
	}
	s := r.Dst.String()
	if r.Gw.IsValid() {
		s += " via " + r.Gw.String()
	}
	s += " dev " + r.Dev
	if r.OnLink {
		s += " onlink"
	}
	return s
}

// RouteKey identifies a route: by destination in the main table.
type RouteKey struct{ Dst netip.Prefix }

// Key returns r's identity.
func (r Route) Key() RouteKey { return RouteKey{r.Dst} }

// Neigh is a permanent neighbour (ARP/NDP) entry.
type Neigh struct {
	Dev string
	IP  netip.Addr
	MAC MAC
}

// NeighKey identifies a neighbour entry.
type NeighKey struct {
	Dev string
	IP  netip.Addr
}

// Key returns n's identity.
func (n Neigh) Key() NeighKey { return NeighKey{n.Dev, n.IP} }

// FDB is a permanent bridge forwarding entry on a VXLAN device: frames to
// MAC are sent to the VTEP at Dst.
type FDB struct {
	Dev string
	MAC MAC
	Dst netip.Addr
}

// FDBKey identifies an FDB entry; it is the entry itself.
type FDBKey = FDB

// Key returns f's identity.
func (f FDB) Key() FDBKey { return f }

// State is a declared set of kernel objects.
type State struct {
	Links  map[string]Link
	Routes map[RouteKey]Route
	Neighs map[NeighKey]Neigh
	FDB    map[FDBKey]FDB
	// WGPeers are the peers of our WireGuard devices.
	WGPeers map[WGPeerKey]WGPeer
	// UDPPeers are the forwarding tables of our udp devices.
	UDPPeers map[UDPPeerKey]UDPPeer
}

// NewState returns an empty State with its maps made.
func NewState() *State {
	return &State{
		Links:    map[string]Link{},
		Routes:   map[RouteKey]Route{},
		Neighs:   map[NeighKey]Neigh{},
		FDB:      map[FDBKey]FDB{},
		WGPeers:  map[WGPeerKey]WGPeer{},
		UDPPeers: map[UDPPeerKey]UDPPeer{},
	}
}

// NewStateSized returns an empty State with room for links links and
// peers peers' worth of routes, neighbours and FDB entries, so that
// planning thousands of peers does not regrow its maps.
func NewStateSized(links, peers int) *State {
	return &State{
		Links:    make(map[string]Link, links),
		Routes:   make(map[RouteKey]Route, peers),
		Neighs:   make(map[NeighKey]Neigh, peers),
		FDB:      make(map[FDBKey]FDB, peers),
		WGPeers:  map[WGPeerKey]WGPeer{},
		UDPPeers: map[UDPPeerKey]UDPPeer{},
	}
}

// AddRoute, AddNeigh and AddFDB insert objects keyed by their identity.
func (s *State) AddRoute(r Route) { s.Routes[r.Key()] = r }

// AddNeigh inserts n.
func (s *State) AddNeigh(n Neigh) { s.Neighs[n.Key()] = n }

// AddFDB inserts f.
func (s *State) AddFDB(f FDB) { s.FDB[f.Key()] = f }

// Lines renders s as sorted `ip`-style lines; tests compare text.
func (s *State) Lines() []string {
	var out []string
	for _, l := range s.Links {
		out = append(out, linkLine(l))
	}
	for _, r := range s.Routes {
		out = append(out, "route "+r.String())
	}
	for _, n := range s.Neighs {
		out = append(out, fmt.Sprintf("neigh %s lladdr %s dev %s permanent", n.IP, n.MAC, n.Dev))
	}
	for _, f := range s.FDB {
		out = append(out, fmt.Sprintf("fdb %s dst %s dev %s self permanent", f.MAC, f.Dst, f.Dev))
	}
	for _, p := range s.WGPeers {
		out = append(out, "wg "+p.String())
	}
	for _, p := range s.UDPPeers {
		out = append(out, "udp "+p.String())
	}
	sort.Strings(out)
	return out
}

func (s *State) String() string { return strings.Join(s.Lines(), "\n") }

// Changes counts what a Reconcile wrote, by kind.
type Changes struct {
	LinksAdded, LinksRemoved, LinksUpdated int
	RoutesAdded, RoutesRemoved             int
	NeighsAdded, NeighsRemoved             int
	FDBAdded, FDBRemoved                   int
	WGPeersAdded, WGPeersRemoved           int
	UDPPeersAdded, UDPPeersRemoved         int
}

// Total is the number of kernel writes counted in c.
func (c Changes) Total() int {
	return c.LinksAdded + c.LinksRemoved + c.LinksUpdated + c.RoutesAdded + c.RoutesRemoved +
		c.NeighsAdded + c.NeighsRemoved + c.FDBAdded + c.FDBRemoved + c.WGPeersAdded + c.WGPeersRemoved +
		c.UDPPeersAdded + c.UDPPeersRemoved
}

// Add returns the sum of c and d.
func (c Changes) Add(d Changes) Changes {
	return Changes{
		LinksAdded: c.LinksAdded + d.LinksAdded, LinksRemoved: c.LinksRemoved + d.LinksRemoved,
		LinksUpdated: c.LinksUpdated + d.LinksUpdated,
		RoutesAdded:  c.RoutesAdded + d.RoutesAdded, RoutesRemoved: c.RoutesRemoved + d.RoutesRemoved,
		NeighsAdded: c.NeighsAdded + d.NeighsAdded, NeighsRemoved: c.NeighsRemoved + d.NeighsRemoved,
		FDBAdded: c.FDBAdded + d.FDBAdded, FDBRemoved: c.FDBRemoved + d.FDBRemoved,
		WGPeersAdded: c.WGPeersAdded + d.WGPeersAdded, WGPeersRemoved: c.WGPeersRemoved + d.WGPeersRemoved,
		UDPPeersAdded: c.UDPPeersAdded + d.UDPPeersAdded, UDPPeersRemoved: c.UDPPeersRemoved + d.UDPPeersRemoved,
	}
}

// Clone returns a deep copy of s.
func (s *State) Clone() *State {
	c := NewState()
	for k, v := range s.Links {
		c.Links[k] = v
	}
	for k, v := range s.Routes {
		c.Routes[k] = v
	}
	for k, v := range s.Neighs {
		c.Neighs[k] = v
	}
	for k, v := range s.FDB {
		c.FDB[k] = v
	}
	for k, v := range s.WGPeers {
		c.WGPeers[k] = v
	}
	for k, v := range s.UDPPeers {
		c.UDPPeers[k] = v
	}
	return c
}

// Objects are the routes, neighbours and FDB entries that one source of
// desired state — typically one peer lease — contributes. Backends plan
// them per peer (backend.Backend.Peer), so a lease event replans one
// peer instead of all of them.
type Objects struct {
	Routes   []Route
	Neighs   []Neigh
	FDB      []FDB
	WGPeers  []WGPeer
	UDPPeers []UDPPeer
}

// Len is the number of objects in o.
func (o Objects) Len() int {
	return len(o.Routes) + len(o.Neighs) + len(o.FDB) + len(o.WGPeers) + len(o.UDPPeers)
}

// Equal reports whether o and p hold the same objects in the same order
// (planners are deterministic, so a replanned, unchanged peer compares
// equal).
func (o Objects) Equal(p Objects) bool {
	return slices.Equal(o.Routes, p.Routes) && slices.Equal(o.Neighs, p.Neighs) && slices.Equal(o.FDB, p.FDB) &&
		slices.Equal(o.WGPeers, p.WGPeers) && slices.Equal(o.UDPPeers, p.UDPPeers)
}

// AddRoute, AddNeigh and AddFDB append one object.
func (o *Objects) AddRoute(r Route) { o.Routes = append(o.Routes, r) }

// AddNeigh appends n.
func (o *Objects) AddNeigh(n Neigh) { o.Neighs = append(o.Neighs, n) }

// AddFDB appends f.
func (o *Objects) AddFDB(f FDB) { o.FDB = append(o.FDB, f) }

// Delta names the route, neighbour and FDB keys whose desired value may
// have changed since the last reconcile: the keys an incremental pass
// (Reconciler.ReconcileDelta) looks at. A key may be touched without its
// value having changed; the reconciler then writes nothing for it.
type Delta struct {
	Routes map[RouteKey]struct{}
	Neighs map[NeighKey]struct{}
	FDB    map[FDBKey]struct{}
	// WGPeers are touched WireGuard peers.
	WGPeers map[WGPeerKey]struct{}
	// UDPPeers are touched udp forwarding entries.
	UDPPeers map[UDPPeerKey]struct{}
}

// NewDelta returns an empty Delta with its maps made.
func NewDelta() *Delta {
	return &Delta{Routes: map[RouteKey]struct{}{}, Neighs: map[NeighKey]struct{}{}, FDB: map[FDBKey]struct{}{},
		WGPeers: map[WGPeerKey]struct{}{}, UDPPeers: map[UDPPeerKey]struct{}{}}
}

// TouchObjects records every key of o.
func (d *Delta) TouchObjects(o Objects) {
	for _, r := range o.Routes {
		d.Routes[r.Key()] = struct{}{}
	}
	for _, n := range o.Neighs {
		d.Neighs[n.Key()] = struct{}{}
	}
	for _, f := range o.FDB {
		d.FDB[f.Key()] = struct{}{}
	}
	for _, p := range o.WGPeers {
		d.WGPeers[p.Key()] = struct{}{}
	}
	for _, p := range o.UDPPeers {
		d.UDPPeers[p.Key()] = struct{}{}
	}
}

// Len is the number of touched keys.
func (d *Delta) Len() int {
	return len(d.Routes) + len(d.Neighs) + len(d.FDB) + len(d.WGPeers) + len(d.UDPPeers)
}

// Reset forgets every touched key. A map's storage is kept for the next
// pass while it is small; one that a burst grew (a join of thousands of
// peers) is dropped, as a Go map never shrinks: kept, it would hold the
// burst's size for the daemon's lifetime (5 MB after 20,000 joins).
func (d *Delta) Reset() {
	d.Routes = reset(d.Routes)
	d.Neighs = reset(d.Neighs)
	d.FDB = reset(d.FDB)
	d.WGPeers = reset(d.WGPeers)
	d.UDPPeers = reset(d.UDPPeers)
}

// deltaKeep is how many touched keys of a kind a Delta keeps room for
// across Reset.
const deltaKeep = 1024

func reset[K comparable](m map[K]struct{}) map[K]struct{} {
	if len(m) > deltaKeep {
		return map[K]struct{}{}
	}
	clear(m)
	return m
}
