package doctor

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/subnetenv"
)

// The host checks: routes into the cluster network that are not ours, a
// second flanneld, and a subnet.env that disagrees with our lease.

// checkRoutes: a route inside the cluster network that we did not make
// takes pod traffic somewhere else (a VPN's, a Docker network's, an old
// flanneld's on a device since renamed). Ours: on our devices, or with
// our route protocol, or inside our own lease (the pod bridge's).
// Less specific routes (a default route, 10.0.0.0/8) lose to ours and are
// left alone.
func checkRoutes(_ context.Context, e *Env) []Finding {
	nets := clusterNetworks(e)
	if len(nets) == 0 {
		return []Finding{skip("no daemon status: the cluster network is unknown")}
	}
	routes, err := e.Host.Routes()
	if err != nil {
		return []Finding{{Level: Warn, Message: fmt.Sprintf("cannot read routes: %v", err)}}
	}
	own := ownSubnets(e)
	var out []Finding
	for _, r := range routes {
		if !r.Dst.IsValid() || r.Table == 255 || slices.Contains(e.Status.Devices, r.Dev) || r.Protocol == dataplane.RouteProtocol {
			continue
		}
		if slices.ContainsFunc(own, func(p netip.Prefix) bool { return p.Bits() <= r.Dst.Bits() && p.Overlaps(r.Dst) }) {
			continue
		}
		for _, n := range nets {
			if r.Dst.Bits() >= n.Bits() && n.Overlaps(r.Dst) {
				out = append(out, Finding{Level: Fail,
					Message: fmt.Sprintf("route %s is inside the cluster network %s and is not ours: traffic to those pods goes there", describeRoute(r), n),
					Fix:     fmt.Sprintf("remove it (ip route del %s table %d) or move what uses those addresses out of %s", r.Dst, r.Table, n)})
			}
		}
	}
	if len(out) == 0 {
		out = append(out, ok("no foreign route inside %s", joinPrefixes(nets)))
	}
	return out
}

func describeRoute(r Route) string {
	s := r.Dst.String()
	if r.Type != "" && r.Type != "unicast" {
		s = r.Type + " " + s
	}
	if r.Gw.IsValid() {
		s += " via " + r.Gw.String()
	}
	if r.Dev != "" {
		s += " dev " + r.Dev
	}
	s += fmt.Sprintf(" proto %d", r.Protocol)
	if r.Table != 254 && r.Table != 0 {
		s += fmt.Sprintf(" table %d", r.Table)
	}
	return s
}

func ownSubnets(e *Env) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{e.Status.Lease.Subnet, e.Status.Lease.IPv6Subnet} {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// checkProcesses: two flanneld in one network namespace (ours and
// upstream's after a half-done migration, or a stale one) fight over the
// same device, routes and subnet.env.
func checkProcesses(_ context.Context, e *Env) []Finding {
	ps, err := e.Host.Processes()
	if err != nil {
		return []Finding{{Level: Warn, Message: fmt.Sprintf("cannot list processes: %v", err)}}
	}
	var found []string
	for _, p := range ps {
		if isFlanneld(p) {
			found = append(found, fmt.Sprintf("%d (%s)", p.PID, strings.Join(p.Cmdline, " ")))
		}
	}
	switch len(found) {
	case 0:
		return []Finding{{Level: Warn, Message: "no flanneld runs in this network namespace"}}
	case 1:
		return []Finding{ok("one flanneld: pid %s", found[0])}
	}
	return []Finding{{Level: Fail,
		Message: fmt.Sprintf("%d flanneld processes in this network namespace: %s; they overwrite each other's devices, routes and subnet.env", len(found), strings.Join(found, ", ")),
		Fix:     "stop all but one (the DaemonSet's, or the systemd unit's)"}}
}

func isFlanneld(p Process) bool {
	if p.Name == "flanneld" {
		return true
	}
	return len(p.Cmdline) > 0 && filepath.Base(p.Cmdline[0]) == "flanneld"
}

// checkSubnetEnv: the CNI plugin gives pods addresses from subnet.env; a
// file that disagrees with the lease (left by another daemon, restored
// from a backup, written before a lease change) hands out another host's
// addresses, or an MTU the devices do not have.
func checkSubnetEnv(_ context.Context, e *Env) []Finding {
	path := e.SubnetFile
	if path == "" && e.Status != nil {
		path = e.Status.Host.SubnetFile
	}
	if path == "" {
		return []Finding{skip("no daemon status and no --subnet-file")}
	}
	b, err := e.Host.ReadFile(path)
	if err != nil {
		return []Finding{{Level: Fail, Message: fmt.Sprintf("cannot read %s: %v: pods cannot be attached", path, err),
			Fix: "see /readyz (weft status): flanneld writes it once its lease is held"}}
	}
	env, err := subnetenv.Parse(b)
	if err != nil {
		return []Finding{{Level: Fail, Message: fmt.Sprintf("%s: %v", path, err), Fix: "flanneld rewrites it at its next resync (10 s); see weft status if it does not"}}
	}
	if e.Status == nil {
		return []Finding{skip("%s read, but no daemon status to compare it with", path)}
	}
	st := e.Status
	var diffs []string
	cmp := func(what, file, want string) {
		if file != want {
			diffs = append(diffs, fmt.Sprintf("%s %s, the daemon %s", what, dash(file), dash(want)))
		}
	}
	cmp("FLANNEL_SUBNET", str(subnetenv.LeasedSubnet(env.Subnet)), st.Lease.Subnet)
	cmp("FLANNEL_IPV6_SUBNET", str(subnetenv.LeasedSubnet(env.IPv6Subnet)), st.Lease.IPv6Subnet)
	cmp("FLANNEL_NETWORK", first(env.Networks), st.Host.Network)
	cmp("FLANNEL_IPV6_NETWORK", first(env.IPv6Networks), st.Host.IPv6Network)
	if st.Host.MTU != 0 && env.MTU != st.Host.MTU {
		diffs = append(diffs, fmt.Sprintf("FLANNEL_MTU %d, the daemon %d", env.MTU, st.Host.MTU))
	}
	if len(diffs) > 0 {
		return []Finding{{Level: Fail,
			Message: fmt.Sprintf("%s disagrees with the lease: %s; pods attached now get wrong addresses or MTU", path, strings.Join(diffs, "; ")),
			Fix:     "flanneld rewrites it at its next resync (10 s); if it stays wrong, another process writes it (see flanneld-processes) or the daemon cannot (see /readyz)"}}
	}
	return []Finding{ok("%s matches the lease (%s, MTU %d)", path, dash(st.Lease.Subnet+" "+st.Lease.IPv6Subnet), env.MTU)}
}

func first(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return ""
	}
	return ps[0].String()
}

func str(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

func dash(s string) string {
	if s = strings.TrimSpace(s); s == "" {
		return "-"
	}
	return s
}
