package dataplane_test

import (
	"context"
	"crypto/rand"
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/dataplane/dataplanetest"
)

// ownSubnets are this host's lease subnets in the suite's numbering.
var ownSubnets = []netip.Prefix{dataplanetest.Subnet4(0), dataplanetest.Subnet6(0)}

// blackholes is the desired state --ip-blackhole-route adds.
func blackholes() *dataplane.State {
	s := dataplane.NewState()
	for _, p := range ownSubnets {
		s.AddRoute(dataplane.Route{Dst: p, Blackhole: true})
	}
	return s
}

// nthAddr returns the n-th address of p.
func nthAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Addr()
	for range n {
		a = a.Next()
	}
	return a
}

// routeVia looks dst up as the host's output path does: the device, or
// the lookup's error (EINVAL for a blackhole).
func (h *nsHarness) routeVia(dst netip.Addr) (dev string, err error) {
	h.t.Helper()
	rs, err := h.h.RouteGet(dst.AsSlice())
	if err != nil {
		return "", err
	}
	if len(rs) == 0 {
		h.t.Fatalf("route get %s: no route and no error", dst)
	}
	l, err := h.h.LinkByIndex(rs[0].LinkIndex)
	h.check("link of route", err)
	return l.Attrs().Name, nil
}

// wantBlackholed fails unless traffic from the host to dst is dropped by
// a blackhole route: the kernel refuses the route lookup with EINVAL (an
// unreachable route would give EHOSTUNREACH, a missing one ENETUNREACH).
func (h *nsHarness) wantBlackholed(dst netip.Addr) {
	h.t.Helper()
	if dev, err := h.routeVia(dst); !errors.Is(err, unix.EINVAL) {
		h.t.Errorf("route to %s: dev %q, err %v; want blackholed (EINVAL)", dst, dev, err)
	}
}

// TestNetlinkBlackholeBehindBridge checks the kernel behaviour that makes
// --ip-blackhole-route safe: with a CNI bridge holding the subnet, its
// connected route wins over our blackhole (metric BlackholeMetric) and pods
// reach each other and the host; without a bridge, traffic to the subnet
// is dropped instead of leaking out the default route.
func TestNetlinkBlackholeBehindBridge(t *testing.T) {
	h := newNS(t)
	ip := func(args ...string) { run(t, append([]string{"ip", "-n", h.name}, args...)...) }
	gw4, gw6 := h.u.Addr4.Masked().Addr().Next(), h.u.Addr6.Masked().Addr().Next()
	ip("route", "add", "default", "via", gw4.String(), "dev", h.u.Name)
	ip("-6", "route", "add", "default", "via", gw6.String(), "dev", h.u.Name)
	pod4 := func(n int) netip.Addr { return nthAddr(ownSubnets[0], n) }
	pod6 := func(n int) netip.Addr { return nthAddr(ownSubnets[1], n) }

	// Without the blackhole, an unassigned pod address leaks to the
	// default route: the defect the flag exists for.
	for _, a := range []netip.Addr{pod4(5), pod6(5)} {
		if dev, err := h.routeVia(a); err != nil || dev != h.u.Name {
			t.Fatalf("before: route to %s = dev %q, %v; want the default route on %s", a, dev, err, h.u.Name)
		}
	}

	want := blackholes()
	dataplanetest.WantChanges(t, "add", dataplanetest.Reconcile(t, h.dp, want, true), dataplane.Changes{RoutesAdded: 2})
	for _, p := range ownSubnets {
		rs := h.routes(p)
		if len(rs) != 1 || rs[0].Type != unix.RTN_BLACKHOLE || rs[0].Protocol != dataplane.RouteProtocol ||
			uint32(rs[0].Priority) != dataplane.BlackholeMetric {
			t.Errorf("routes to %s = %+v; want one blackhole, proto %d, metric %d", p, rs, dataplane.RouteProtocol, dataplane.BlackholeMetric)
		}
	}
	h.wantBlackholed(pod4(5))
	h.wantBlackholed(pod6(5))

	// A bridge owning the subnet, as the CNI bridge plugin sets up cni0,
	// with two pods on it.
	ip("link", "add", "name", "cni0", "type", "bridge")
	ip("addr", "add", netip.PrefixFrom(pod4(1), 24).String(), "dev", "cni0")
	ip("addr", "add", netip.PrefixFrom(pod6(1), 64).String(), "dev", "cni0", "nodad")
	ip("link", "set", "cni0", "up")
	pods := []string{newPod(t, h, "veth1", pod4(2), pod6(2), pod4(1)), newPod(t, h, "veth2", pod4(3), pod6(3), pod4(1))}

	for _, a := range []netip.Addr{pod4(2), pod6(2), pod4(5), pod6(5)} {
		if dev, err := h.routeVia(a); err != nil || dev != "cni0" {
			t.Errorf("with the bridge: route to %s = dev %q, %v; want cni0 (its connected route wins)", a, dev, err)
		}
	}
	ping(t, h.name, pod4(2))
	ping(t, h.name, pod6(3))
	ping(t, pods[0], pod4(3))
	ping(t, pods[1], pod6(2))
	ping(t, pods[0], pod4(1))
	// The connected routes are not ours: a full pass leaves them and keeps
	// our blackholes.
	dataplanetest.WantChanges(t, "full with bridge", dataplanetest.Reconcile(t, h.dp, want, true), dataplane.Changes{})
	for _, p := range ownSubnets {
		if rs := h.routes(p); len(rs) != 2 {
			t.Errorf("routes to %s = %+v; want the bridge's and our blackhole", p, rs)
		}
	}

	// The bridge goes away (its routes with it): the blackhole takes over.
	ip("link", "del", "cni0")
	h.wantBlackholed(pod4(2))
	h.wantBlackholed(pod6(2))
}

// newPod makes a namespace with a veth into h's cni0, addresses v4/24 and
// v6/64 and a default route via gw; it returns the namespace's name.
func newPod(t *testing.T, h *nsHarness, hostSide string, v4, v6, gw netip.Addr) string {
	t.Helper()
	name := "wt-dp-pod-" + strings.ToLower(rand.Text()[:8])
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", h.name, "link", "add", "name", hostSide, "type", "veth", "peer", "name", "eth0", "netns", name)
	run(t, "ip", "-n", h.name, "link", "set", hostSide, "master", "cni0", "up")
	pod := func(args ...string) { run(t, append([]string{"ip", "-n", name}, args...)...) }
	pod("link", "set", "lo", "up")
	pod("addr", "add", netip.PrefixFrom(v4, 24).String(), "dev", "eth0")
	pod("addr", "add", netip.PrefixFrom(v6, 64).String(), "dev", "eth0", "nodad")
	pod("link", "set", "eth0", "up")
	pod("route", "add", "default", "via", gw.String())
	return name
}

// ping sends one echo request from namespace ns to dst and fails the test
// if no reply comes.
func ping(t *testing.T, ns string, dst netip.Addr) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", dst.String()).CombinedOutput()
	if err != nil {
		t.Errorf("ping %s from %s: %v\n%s", dst, ns, err, out)
	}
}

// TestNetlinkBlackholeDeletedBehindOurBack: the deletion notification of a
// blackhole (no device for IPv4, lo for IPv6) is recognised as drift, so
// the next non-full pass restores it.
func TestNetlinkBlackholeDeletedBehindOurBack(t *testing.T) {
	h := newNS(t)
	want := blackholes()
	dataplanetest.Reconcile(t, h.dp, want, true)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kicks := make(chan struct{}, 16)
	go h.dp.Subscribe(ctx, func() { kicks <- struct{}{} })
	waitKick := func(what string) {
		t.Helper()
		select {
		case <-kicks:
		case <-time.After(2 * time.Second):
			t.Fatalf("%s: no kick within 2s", what)
		}
	}
	waitKick("subscription established")

	// A foreign blackhole's deletion is not drift.
	other := netip.MustParsePrefix("10.99.0.0/24")
	h.check("add foreign blackhole", h.h.RouteAdd(&netlink.Route{Dst: ipNet(other), Type: unix.RTN_BLACKHOLE}))
	h.check("delete foreign blackhole", h.h.RouteDel(&netlink.Route{Dst: ipNet(other), Type: unix.RTN_BLACKHOLE}))
	select {
	case <-kicks:
		t.Error("a foreign blackhole's deletion caused a kick")
	case <-time.After(300 * time.Millisecond):
	}

	for _, p := range ownSubnets {
		h.DeleteRoute(dataplane.RouteKey{Dst: p})
		waitKick("blackhole " + p.String() + " deleted")
		dataplanetest.WantChanges(t, "repair "+p.String(), dataplanetest.Reconcile(t, h.dp, want, false), dataplane.Changes{RoutesAdded: 1})
	}
	for _, p := range ownSubnets {
		if !h.HasRoute(p) {
			t.Errorf("blackhole %s not restored", p)
		}
	}
}
