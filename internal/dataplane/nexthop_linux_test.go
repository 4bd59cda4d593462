package dataplane_test

import (
	"context"
	"encoding/json"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/dataplane/dataplanetest"
)

// nexthop is one line of `ip -j nexthop show`.
type nexthop struct {
	ID       uint32   `json:"id"`
	Gateway  string   `json:"gateway"`
	Dev      string   `json:"dev"`
	Protocol string   `json:"protocol"`
	Flags    []string `json:"flags"`
}

func (h *nsHarness) nexthops() []nexthop {
	h.t.Helper()
	out, err := exec.Command("ip", "-n", h.name, "-j", "nexthop", "show").Output()
	h.check("ip nexthop show", err)
	var nhs []nexthop
	if len(out) > 0 {
		h.check("parse ip nexthop show", json.Unmarshal(out, &nhs))
	}
	return nhs
}

// routeNH is the nexthop object ID the route to dst uses (0: none).
func (h *nsHarness) routeNH(dst string) uint32 {
	h.t.Helper()
	fam := "-4"
	if strings.Contains(dst, ":") {
		fam = "-6"
	}
	out, err := exec.Command("ip", "-n", h.name, fam, "-j", "route", "show", dst).Output()
	h.check("ip route show", err)
	var rs []struct {
		NHID uint32 `json:"nhid"`
	}
	h.check("parse ip route show", json.Unmarshal(out, &rs))
	if len(rs) != 1 {
		h.t.Fatalf("%d routes to %s, want 1", len(rs), dst)
	}
	return rs[0].NHID
}

func ids(nhs []nexthop) []uint32 {
	var out []uint32
	for _, nh := range nhs {
		out = append(out, nh.ID)
	}
	slices.Sort(out)
	return out
}

// TestNexthopObjects checks how IPv4 gateway routes are carried by
// nexthop objects: one each, created with the route, kept across a
// restart, removed with the route, and collected when unused.
func TestNexthopObjects(t *testing.T) {
	h := newNS(t)
	tp := dataplanetest.NewTopology(h.u)
	dataplanetest.Reconcile(t, h.dp, tp.State(), true)

	// Peers 1 and 2 over flannel.1 (onlink) get objects; peer 3's route,
	// direct over the underlay eth0, stays plain (a carrier flap would
	// flush an object and its route silently), as do the IPv6 routes.
	nhs := h.nexthops()
	if len(nhs) != 2 {
		t.Fatalf("nexthop objects: %+v, want 2", nhs)
	}
	for _, nh := range nhs {
		if nh.Protocol != "87" && nh.Protocol != "0x57" {
			t.Errorf("nexthop %d has protocol %q, want ours (87)", nh.ID, nh.Protocol)
		}
		if nh.Dev != dataplanetest.Dev4 || !slices.Contains(nh.Flags, "onlink") {
			t.Errorf("nexthop %+v: want an onlink object on %s", nh, dataplanetest.Dev4)
		}
	}
	nh1 := h.routeNH(dataplanetest.Subnet4(1).String())
	if nh1 == 0 || h.routeNH(dataplanetest.Subnet4(2).String()) == 0 {
		t.Fatal("IPv4 routes on flannel.1 do not use nexthop objects")
	}
	if h.routeNH(dataplanetest.Subnet4(3).String()) != 0 {
		t.Error("the route over the underlay uses a nexthop object; it should stay plain")
	}
	if h.routeNH(dataplanetest.Subnet6(1).String()) != 0 {
		t.Error("an IPv6 route uses a nexthop object; it should stay plain")
	}

	// A restarted Netlink adopts routes and objects: nothing is written.
	before := ids(nhs)
	dp := h.newDP()
	dataplanetest.WantChanges(t, "full pass after restart", dataplanetest.Reconcile(t, dp, tp.State(), true), dataplane.Changes{})
	if got := ids(h.nexthops()); !slices.Equal(got, before) {
		t.Errorf("objects after restart %v, want %v", got, before)
	}

	// A peer that leaves: its route goes at once, its object (unused by
	// then) with the next full pass.
	delete(tp.Peers, 1)
	c := dataplanetest.Reconcile(t, dp, tp.State(), false)
	if c.RoutesRemoved != 2 || h.HasRoute(dataplanetest.Subnet4(1)) {
		t.Errorf("removing peer 1: %+v, want its 2 routes removed", c)
	}
	dataplanetest.WantChanges(t, "full pass after peer 1 left", dataplanetest.Reconcile(t, dp, tp.State(), true), dataplane.Changes{})
	if got := ids(h.nexthops()); slices.Contains(got, nh1) || len(got) != 1 {
		t.Errorf("objects after peer 1 left and a full pass: %v, want peer 2's alone, without %d", got, nh1)
	}

	// An unused object of ours is collected by a full pass; another
	// program's is left alone, even inside our ID range, and our next
	// allocation steps over it.
	out, err := exec.Command("ip", "-n", h.name, "nexthop", "add", "id", "1459617700", "via", "10.244.77.0",
		"dev", dataplanetest.Dev4, "onlink", "proto", "87").CombinedOutput()
	h.check("add stray nexthop: "+string(out), err)
	maxID := slices.Max(ids(h.nexthops()))
	foreign := maxID + 1
	out, err = exec.Command("ip", "-n", h.name, "nexthop", "add", "id", strconv.FormatUint(uint64(foreign), 10), "via", "10.244.78.0",
		"dev", dataplanetest.Dev4, "onlink", "proto", "static").CombinedOutput()
	h.check("add foreign nexthop: "+string(out), err)
	dp = h.newDP()
	dataplanetest.Reconcile(t, dp, tp.State(), true)
	got := ids(h.nexthops())
	if slices.Contains(got, 1459617700) || !slices.Contains(got, foreign) {
		t.Errorf("objects after a full pass: %v; want the stray gone and the foreign %d kept", got, foreign)
	}
	tp.Peers[1] = 1
	dataplanetest.Reconcile(t, dp, tp.State(), false)
	if id := h.routeNH(dataplanetest.Subnet4(1).String()); id == 0 || id == foreign {
		t.Errorf("peer 1's route back with object %d; want a new one, not the foreign %d", id, foreign)
	}

	// An object deleted by hand takes its route along; the next full pass
	// puts both back.
	id2 := h.routeNH(dataplanetest.Subnet4(2).String())
	out, err = exec.Command("ip", "-n", h.name, "nexthop", "del", "id", strconv.FormatUint(uint64(id2), 10)).CombinedOutput()
	h.check("delete nexthop by hand: "+string(out), err)
	if h.HasRoute(dataplanetest.Subnet4(2)) {
		t.Fatal("the kernel kept a route whose nexthop object was deleted")
	}
	dataplanetest.Reconcile(t, dp, tp.State(), true)
	dataplanetest.WantKernel(t, h, tp.State())
}

// TestNexthopUpgradeFromPlainRoutes: routes installed plain (by an older
// weft, or on a kernel without objects) are adopted as they are, and
// removed correctly.
func TestNexthopUpgradeFromPlainRoutes(t *testing.T) {
	h := newNS(t)
	h.plain = true
	tp := dataplanetest.NewTopology(h.u)
	dataplanetest.Reconcile(t, h.newDP(), tp.State(), true)
	if n := len(h.nexthops()); n != 0 {
		t.Fatalf("plain routes made %d nexthop objects", n)
	}
	h.plain = false
	dp := h.newDP()
	dataplanetest.WantChanges(t, "adopting plain routes", dataplanetest.Reconcile(t, dp, tp.State(), true), dataplane.Changes{})
	delete(tp.Peers, 1)
	delete(tp.Peers, 3)
	c := dataplanetest.Reconcile(t, dp, tp.State(), false)
	if c.RoutesRemoved != 4 {
		t.Errorf("removing peers 1 and 3: %+v, want 4 routes removed", c)
	}
	dataplanetest.WantKernel(t, h, tp.State())
	// A new peer gets an object.
	tp.Peers[4] = 4
	dataplanetest.Reconcile(t, dp, tp.State(), false)
	if h.routeNH(dataplanetest.Subnet4(4).String()) == 0 {
		t.Error("a route added after the upgrade is plain")
	}
	dataplanetest.WantKernel(t, h, tp.State())
	dataplanetest.WantChanges(t, "full pass after the upgrade", dataplanetest.Reconcile(t, dp, tp.State(), true), dataplane.Changes{})
}

// TestNexthopIDTaken: another program creates an object under the ID we
// would allocate next (after our last full read, so we cannot know). The
// exclusive create fails, and the route must not be written naming the
// other program's object; the retry takes the next ID.
func TestNexthopIDTaken(t *testing.T) {
	h := newNS(t)
	tp := dataplanetest.NewTopology(h.u)
	dataplanetest.Reconcile(t, h.dp, tp.State(), true)
	next := slices.Max(ids(h.nexthops())) + 1
	out, err := exec.Command("ip", "-n", h.name, "nexthop", "add", "id", strconv.FormatUint(uint64(next), 10),
		"via", "10.244.99.0", "dev", dataplanetest.Dev4, "onlink", "proto", "static").CombinedOutput()
	h.check("add foreign nexthop: "+string(out), err)

	tp.Peers[4] = 4
	if _, err := h.dp.ReconcileDelta(context.Background(), tp.State(), touchedPeer(4)); err == nil {
		t.Fatal("the pass succeeded although the nexthop ID it allocated was taken")
	}
	if h.HasRoute(dataplanetest.Subnet4(4)) {
		t.Fatalf("peer 4's route was written anyway (object %d)", h.routeNH(dataplanetest.Subnet4(4).String()))
	}
	// The daemon follows a failed pass with a complete diff.
	dataplanetest.Reconcile(t, h.dp, tp.State(), false)
	if id := h.routeNH(dataplanetest.Subnet4(4).String()); id == 0 || id == next {
		t.Errorf("peer 4's route uses object %d; want one of ours, not the foreign %d", id, next)
	}
	if got := ids(h.nexthops()); !slices.Contains(got, next) {
		t.Errorf("the foreign object %d is gone: %v", next, got)
	}
	dataplanetest.WantKernel(t, h, tp.State())
}

// touchedPeer is the delta a daemon records when peer id joins or leaves.
func touchedPeer(id int) *dataplane.Delta {
	d := dataplane.NewDelta()
	gw4, gw6 := dataplanetest.Subnet4(id).Addr(), dataplanetest.Subnet6(id).Addr()
	d.Routes[dataplane.RouteKey{Dst: dataplanetest.Subnet4(id)}] = struct{}{}
	d.Routes[dataplane.RouteKey{Dst: dataplanetest.Subnet6(id)}] = struct{}{}
	d.Neighs[dataplane.NeighKey{Dev: dataplanetest.Dev4, IP: gw4}] = struct{}{}
	d.Neighs[dataplane.NeighKey{Dev: dataplanetest.Dev6, IP: gw6}] = struct{}{}
	return d
}
