package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/tools/lab"
)

// Helpers that compare a host's vxlan kernel state with the leases in
// etcd, read independently of the daemon: etcd through the test's
// client, the kernel through netlink in the host's namespace.

// vxlanPeer is what a vxlan lease asks of every other host's kernel; the
// IPv6 fields are set for a dual-stack lease.
type vxlanPeer struct {
	publicIP netip.Addr
	mac      string // VtepMAC, lower case

	subnet6   netip.Prefix
	publicIP6 netip.Addr
	mac6      string
}

// etcdVXLANPeers reads every lease under the subnets directory, keyed by
// IPv4 subnet (every lease of these tests has one), and the revision
// read at.
func (c *cluster) etcdVXLANPeers() (map[netip.Prefix]vxlanPeer, int64) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.etcd.Get(ctx, subnetsPrefix, clientv3.WithPrefix())
	if err != nil {
		c.t.Fatal(err)
	}
	out := make(map[netip.Prefix]vxlanPeer, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		p, p6, err := lease.ParseKey(string(kv.Key))
		if err != nil || !p.IsValid() {
			c.t.Fatalf("lease key %q: %v", kv.Key, err)
		}
		var v struct {
			PublicIP, PublicIPv6       netip.Addr
			BackendData, BackendV6Data struct{ VtepMAC string }
		}
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			c.t.Fatalf("lease %s: %v", kv.Key, err)
		}
		out[p] = vxlanPeer{v.PublicIP, strings.ToLower(v.BackendData.VtepMAC), p6, v.PublicIPv6, strings.ToLower(v.BackendV6Data.VtepMAC)}
	}
	return out, resp.Header.Revision
}

// overlayKernel is what a host's flannel.1 and flannel-v6.1 hold: routes
// (destination → gateway; not the kernel's own), permanent neighbours
// (IP → MAC) and FDB entries ("MAC dst IP", counted, so a duplicate
// shows).
type overlayKernel struct {
	routes map[netip.Prefix]netip.Addr
	neighs map[netip.Addr]string
	fdb    map[string]int
}

// readVXLANKernel dumps flannel.1 and, if there is one, flannel-v6.1 in ns
// through netlink (a dump of a few hundred peers takes about a
// millisecond, so convergence can be timed closely).
func readVXLANKernel(ns string) (overlayKernel, error) {
	k := overlayKernel{routes: map[netip.Prefix]netip.Addr{}, neighs: map[netip.Addr]string{}, fdb: map[string]int{}}
	nsh, err := netns.GetFromName(ns)
	if err != nil {
		return k, err
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return k, err
	}
	defer h.Close()
	for _, dev := range []struct {
		name   string
		family int
	}{{"flannel.1", netlink.FAMILY_V4}, {"flannel-v6.1", netlink.FAMILY_V6}} {
		link, err := h.LinkByName(dev.name)
		if err != nil {
			if dev.family == netlink.FAMILY_V6 {
				continue // not dual-stack
			}
			return k, err
		}
		if err := k.read(h, link, dev.family); err != nil {
			return k, err
		}
	}
	return k, nil
}

func (k *overlayKernel) read(h *netlink.Handle, link netlink.Link, family int) error {
	idx := link.Attrs().Index
	routes, err := h.RouteList(link, family)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if r.Dst == nil || r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		dst, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		gw, _ := netip.AddrFromSlice(r.Gw)
		k.routes[netip.PrefixFrom(dst.Unmap(), ones)] = gw.Unmap()
	}
	neighs, err := h.NeighList(idx, family)
	if err != nil {
		return err
	}
	for _, n := range neighs {
		if n.State&netlink.NUD_PERMANENT == 0 {
			continue
		}
		ip, _ := netip.AddrFromSlice(n.IP)
		k.neighs[ip.Unmap()] = n.HardwareAddr.String()
	}
	fdb, err := h.NeighList(idx, unix.AF_BRIDGE)
	if err != nil {
		return err
	}
	for _, n := range fdb {
		if n.LinkIndex != idx {
			continue
		}
		ip, _ := netip.AddrFromSlice(n.IP)
		k.fdb[n.HardwareAddr.String()+" dst "+ip.Unmap().String()]++
	}
	return nil
}

// vxlanDiff lists how k differs from what the leases in want ask of the
// host holding own: for each other lease, per family it has, a route to
// its subnet via the subnet's first address onlink, a permanent
// neighbour entry for that address with the VtepMAC, an FDB entry sending
// that MAC to its public address; nothing else. Empty when they agree.
func vxlanDiff(want map[netip.Prefix]vxlanPeer, own netip.Prefix, k overlayKernel) []string {
	var d []string
	routes, neighs, fdb := map[netip.Prefix]bool{}, map[netip.Addr]bool{}, map[string]bool{}
	expect := func(p netip.Prefix, public netip.Addr, mac string) {
		gw := p.Addr()
		routes[p], neighs[gw] = true, true
		if got, ok := k.routes[p]; !ok {
			d = append(d, "missing route "+p.String())
		} else if got != gw {
			d = append(d, fmt.Sprintf("route %s via %s, want via %s", p, got, gw))
		}
		if got, ok := k.neighs[gw]; !ok {
			d = append(d, "missing neighbour "+gw.String())
		} else if got != mac {
			d = append(d, fmt.Sprintf("neighbour %s is %s, want %s", gw, got, mac))
		}
		e := mac + " dst " + public.String()
		fdb[e] = true
		if n := k.fdb[e]; n != 1 {
			d = append(d, fmt.Sprintf("fdb %s: %d entries, want 1", e, n))
		}
	}
	for p, v := range want {
		if p == own {
			continue
		}
		expect(p, v.publicIP, v.mac)
		if v.subnet6.IsValid() {
			expect(v.subnet6, v.publicIP6, v.mac6)
		}
	}
	for p := range k.routes {
		if !routes[p] {
			d = append(d, "stale route "+p.String())
		}
	}
	for a, mac := range k.neighs {
		if !neighs[a] {
			d = append(d, fmt.Sprintf("stale neighbour %s %s", a, mac))
		}
	}
	for e := range k.fdb {
		if !fdb[e] {
			d = append(d, "stale fdb "+e)
		}
	}
	sort.Strings(d)
	return d
}

// summary shortens a diff for a failure message.
func summary(d []string) string {
	if len(d) > 12 {
		return fmt.Sprintf("%s … (%d differences)", strings.Join(d[:12], "; "), len(d))
	}
	return strings.Join(d, "; ")
}

// statusPeersDiff compares `weft status --json` peers on h with want.
func (c *cluster) statusPeersDiff(h *lab.Host, want map[netip.Prefix]vxlanPeer) []string {
	c.t.Helper()
	out, _ := c.Exec(context.Background(), h, weftBin, "status", "--json")
	var st struct {
		Daemon struct {
			Peers []struct {
				Subnet, PublicIP, Identity         string
				IPv6Subnet, PublicIPv6, IdentityV6 string
			}
		}
		Drift struct {
			Desired        int
			Missing, Extra []string
		}
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return []string{fmt.Sprintf("weft status --json: %v: %.200s", err, out)}
	}
	var d []string
	got := map[string]bool{}
	for _, p := range st.Daemon.Peers {
		e := p.Subnet + " " + p.PublicIP + " " + strings.ToLower(p.Identity)
		if p.IPv6Subnet != "" {
			e += " " + p.IPv6Subnet + " " + p.PublicIPv6 + " " + strings.ToLower(p.IdentityV6)
		}
		got[e] = true
	}
	wantSet := map[string]bool{}
	for p, v := range want {
		if p == c.subnets[h.Index] {
			continue
		}
		e := p.String() + " " + v.publicIP.String() + " " + v.mac
		if v.subnet6.IsValid() {
			e += " " + v.subnet6.String() + " " + v.publicIP6.String() + " " + v.mac6
		}
		wantSet[e] = true
		if !got[e] {
			d = append(d, "status lacks peer "+e)
		}
	}
	for e := range got {
		if !wantSet[e] {
			d = append(d, "status has peer "+e)
		}
	}
	if len(st.Drift.Missing)+len(st.Drift.Extra) != 0 {
		d = append(d, fmt.Sprintf("drift: missing %v, extra %v", st.Drift.Missing, st.Drift.Extra))
	}
	sort.Strings(d)
	return d
}

// waitConverged polls h's kernel every 2 ms until it agrees with etcd,
// and returns when it first did.
func (c *cluster) waitConverged(h *lab.Host, within time.Duration) time.Time {
	c.t.Helper()
	want, _ := c.etcdVXLANPeers()
	deadline := time.Now().Add(within)
	var d []string
	for {
		k, err := readVXLANKernel(h.NS)
		if err == nil {
			if d = vxlanDiff(want, c.subnets[h.Index], k); len(d) == 0 {
				return time.Now()
			}
		} else {
			d = []string{err.Error()}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: kernel differs from etcd after %v: %s", h.NS, within, summary(d))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// routeLog records every route added or deleted in a namespace, from a
// netlink subscription opened by watchRoutes.
type routeLog struct {
	mu     sync.Mutex
	events []routeEvent
}

type routeEvent struct {
	at  time.Time
	add bool
	dst netip.Prefix
}

func watchRoutes(t *testing.T, ns string) *routeLog {
	t.Helper()
	nsh, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatalf("netns %s: %v", ns, err)
	}
	defer nsh.Close()
	updates := make(chan netlink.RouteUpdate, 4096)
	done := make(chan struct{})
	if err := netlink.RouteSubscribeWithOptions(updates, done, netlink.RouteSubscribeOptions{Namespace: &nsh}); err != nil {
		t.Fatalf("route subscription in %s: %v", ns, err)
	}
	t.Cleanup(func() { close(done) })
	l := &routeLog{}
	go func() {
		for u := range updates {
			if u.Dst == nil || (u.Type != unix.RTM_NEWROUTE && u.Type != unix.RTM_DELROUTE) {
				continue
			}
			a, _ := netip.AddrFromSlice(u.Dst.IP)
			ones, _ := u.Dst.Mask.Size()
			l.mu.Lock()
			l.events = append(l.events, routeEvent{time.Now(), u.Type == unix.RTM_NEWROUTE, netip.PrefixFrom(a.Unmap(), ones)})
			l.mu.Unlock()
		}
	}()
	return l
}

// since returns the events at or after t.
func (l *routeLog) since(t time.Time) []routeEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	i := slices.IndexFunc(l.events, func(e routeEvent) bool { return !e.at.Before(t) })
	if i < 0 {
		return nil
	}
	return slices.Clone(l.events[i:])
}

// resetFromEtcd cuts h off from etcd so that its connection fails at once:
// packets to the hub's port 2379 are answered with a TCP reset, and the
// established connection is destroyed (ss -K). It returns the heal.
func (c *cluster) resetFromEtcd(h *lab.Host) (heal func()) {
	c.t.Helper()
	table := h.NS + "-rst"
	nft := func(args ...string) {
		c.t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", h.NS, "nft"}, args...)...).CombinedOutput()
		if err != nil {
			c.t.Fatalf("nft %v in %s: %v: %s", args, h.NS, err, out)
		}
	}
	nft("add", "table", "inet", table)
	nft("add", "chain", "inet", table, "out", "{ type filter hook output priority 0 ; }")
	nft("add", "rule", "inet", table, "out", "tcp", "dport", "2379", "reject", "with", "tcp", "reset")
	if err := c.killEtcdConns(h); err != nil {
		c.t.Fatal(err)
	}
	return func() { nft("delete", "table", "inet", table) }
}

// killEtcdConns destroys h's TCP connections to etcd (the hub's port
// 2379): its client sees the connection abort at once and dials again.
func (c *cluster) killEtcdConns(h *lab.Host) error {
	hub := strings.TrimPrefix(c.EtcdEndpoint, "http://")
	host, port, _ := net.SplitHostPort(hub)
	out, err := exec.Command("ip", "netns", "exec", h.NS, "ss", "-K", "-t", "dst", host, "dport", "=", port).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ss -K in %s: %v: %s", h.NS, err, out)
	}
	return nil
}
