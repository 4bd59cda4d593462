package doctor

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/httpapi"
)

// The overlay checks: VXLAN TX checksum offload, and the overlay MTU
// against the path.

// checkTxChecksum: with tx-checksum-ip-generic on, a VXLAN device leaves
// the inner packet's checksum to be completed below it. Kernels before 5.7
// got that wrong for packets netfilter NATs (kube-proxy's masquerade):
// the peer dropped them, and connections to services stalled 63 s
// (flannel#1279, #1243, kubernetes#88986, calico#3145; Calico disables
// the offload below 5.7). Later kernels still corrupt it behind some NATs
// and NICs (flannel#1863, #2152), so where peers are known a real probe
// decides: a UDP datagram to a closed port of the peer's overlay address
// is answered (port unreachable) only if its checksum arrived intact.
// Turning the offload off is always safe: the checksum is computed in
// software, a little CPU.
func checkTxChecksum(ctx context.Context, e *Env) []Finding {
	if e.Status == nil {
		return []Finding{skip("no daemon status: our devices are unknown")}
	}
	links, err := e.Host.Links()
	if err != nil {
		return []Finding{{Level: Warn, Message: fmt.Sprintf("cannot list links: %v", err)}}
	}
	release := e.Host.KernelRelease()
	var out []Finding
	for _, l := range links {
		if l.Kind != "vxlan" || !slices.Contains(e.Status.Devices, l.Name) {
			continue
		}
		on, err := e.Host.TxChecksum(l.Name)
		if err != nil {
			out = append(out, Finding{Level: Warn, Message: fmt.Sprintf("cannot read %s of %s: %v", dataplane.TxChecksumFeature, l.Name, err)})
			continue
		}
		if !on {
			out = append(out, ok("%s: %s off", l.Name, dataplane.TxChecksumFeature))
			continue
		}
		dev := l.Name
		fix := Finding{Fixable: true, apply: func(h Host) error { return h.SetTxChecksum(dev, false) },
			Fix: fmt.Sprintf("ethtool -K %s %s off; to keep it, run flanneld with --vxlan-tx-checksum=off", dev, dataplane.TxChecksumFeature)}
		if dataplane.TxChecksumBroken(release) {
			fix.Level = Fail
			fix.Message = fmt.Sprintf("%s: %s on, and kernel %s (before 5.7) corrupts offloaded VXLAN checksums of NATed packets: connections through services stall 63 s", dev, dataplane.TxChecksumFeature, release)
			out = append(out, fix)
			continue
		}
		peers := overlayPeers(e.Status, l.Name, e.sample())
		if e.Reach == nil || len(peers) == 0 {
			out = append(out, ok("%s: %s on; kernel %s is not affected by the NAT bug (no peer probed)", dev, dataplane.TxChecksumFeature, release))
			continue
		}
		var silent []string
		var probeErr error
		for _, p := range peers {
			answered, err := e.Reach.UDP(ctx, p)
			if err != nil {
				probeErr = err
				break
			}
			if !answered {
				silent = append(silent, p.String())
			}
		}
		switch {
		case probeErr != nil:
			out = append(out, Finding{Level: Warn, Message: fmt.Sprintf("%s: cannot probe peers: %v", dev, probeErr)})
		case len(silent) == 0:
			out = append(out, ok("%s: %s on; UDP through it reached %d/%d sampled peers intact", dev, dataplane.TxChecksumFeature, len(peers), len(peers)))
		default:
			fix.Level = Warn
			fix.Message = fmt.Sprintf("%s: %s on and UDP through it got no answer from %d/%d sampled peers (%s): if they answer ping, checksums are being corrupted (flannel#1279, #2152)",
				dev, dataplane.TxChecksumFeature, len(silent), len(peers), strings.Join(silent, ", "))
			out = append(out, fix)
		}
	}
	if len(out) == 0 {
		out = append(out, skip("no VXLAN device of ours (backend %s)", e.Status.Backend))
	}
	return out
}

func (e *Env) sample() int {
	if e.Sample > 0 {
		return e.Sample
	}
	return 16
}

// overlayPeers returns up to n peers' overlay addresses (their devices'
// address: the subnet's network address) of dev's family, spread over
// the list.
func overlayPeers(st *httpapi.Status, dev string, n int) []netip.Addr {
	v6 := strings.HasPrefix(dev, "flannel-v6")
	var all []netip.Addr
	for _, p := range st.Peers {
		s := p.Subnet
		if v6 {
			s = p.IPv6Subnet
		}
		if pr, err := netip.ParsePrefix(s); err == nil {
			all = append(all, pr.Masked().Addr())
		}
	}
	if len(all) <= n {
		return all
	}
	out := make([]netip.Addr, 0, n)
	for i := range n {
		out = append(out, all[i*len(all)/n])
	}
	return out
}

// Tunnel overheads (outer headers) by link kind, IPv4 underlay.
var tunnelOverhead = map[string]int{
	"vxlan": 50, "geneve": 50, "ipip": 20, "sit": 20, "gre": 24, "gretap": 38,
	"ip6tnl": 40, "ip6gre": 44, "wireguard": 60,
}

// checkMTU: pods send packets of the pod MTU (FLANNEL_MTU), which must
// fit the path between hosts after our encapsulation. The backend sizes
// it from the underlay device's MTU; that is wrong when the underlay is
// itself a tunnel (a WireGuard or GRE mesh, a VPN) whose MTU claims more
// than its own path carries, and when the network config's Backend.MTU
// sets it too high. Where peers are known, a don't-fragment probe at the
// pod MTU to a sample of them measures the path itself.
func checkMTU(ctx context.Context, e *Env) []Finding {
	if e.Status == nil || e.Status.Host.Underlay == "" || e.Status.Host.MTU == 0 {
		return []Finding{skip("no daemon status: the underlay and MTU are unknown")}
	}
	links, err := e.Host.Links()
	if err != nil {
		return []Finding{{Level: Warn, Message: fmt.Sprintf("cannot list links: %v", err)}}
	}
	st := e.Status
	byName := map[string]Link{}
	byIndex := map[int]Link{}
	for _, l := range links {
		byName[l.Name], byIndex[l.Index] = l, l
	}
	u, found := byName[st.Host.Underlay]
	if !found {
		return []Finding{{Level: Warn, Message: fmt.Sprintf("underlay %s not found", st.Host.Underlay)}}
	}
	podMTU := st.Host.MTU
	var out []Finding
	// What the underlay really carries: its MTU, or less when it is a
	// tunnel whose own outer packets do not fit the device under it.
	carries := u.MTU
	if over, tunnel := tunnelOverhead[u.Kind]; tunnel {
		parent, known := byIndex[u.Parent]
		if !known {
			parent, known = defaultRouteDevice(e.Host, byName, u.Name)
		}
		switch {
		case !known:
			out = append(out, Finding{Level: Warn, Message: fmt.Sprintf("underlay %s is a %s tunnel (nested): the device under it is unknown, so its path MTU is not checked", u.Name, u.Kind)})
		case parent.MTU-over < u.MTU:
			carries = parent.MTU - over
		default:
			out = append(out, ok("underlay %s is a %s tunnel over %s (MTU %d): its MTU %d fits", u.Name, u.Kind, parent.Name, parent.MTU, u.MTU))
		}
		if carries < u.MTU {
			want := podMTU - (u.MTU - carries)
			out = append(out, Finding{Level: Fail,
				Message: fmt.Sprintf("underlay %s is a %s tunnel (nested) over %s (MTU %d): it carries %d bytes, not its MTU %d, so the pod MTU %d is %d too high and large packets are lost",
					u.Name, u.Kind, parent.Name, parent.MTU, carries, u.MTU, podMTU, u.MTU-carries),
				Fix: fmt.Sprintf("set %s's MTU to %d (ip link set %s mtu %d), or the network config's Backend.MTU to %d, and restart flanneld", u.Name, carries, u.Name, carries, want)})
		}
	}
	// Our devices' MTU against what the underlay carries.
	for _, name := range st.Devices {
		l, ok := byName[name]
		if !ok {
			continue
		}
		over := tunnelOverhead[l.Kind]
		if l.Kind == "vxlan" && strings.HasPrefix(name, "flannel-v6") {
			over = 70
		}
		if over > 0 && l.MTU+over > u.MTU && carries == u.MTU {
			out = append(out, Finding{Level: Fail,
				Message: fmt.Sprintf("%s has MTU %d: with the %d-byte %s header its packets (%d) exceed underlay %s's MTU %d",
					name, l.MTU, over, l.Kind, l.MTU+over, u.Name, u.MTU),
				Fix: fmt.Sprintf("set the network config's Backend.MTU to %d (or leave it unset) and restart flanneld", u.MTU-over)})
		}
	}
	out = append(out, probeMTU(ctx, e, podMTU)...)
	if !slices.ContainsFunc(out, func(f Finding) bool { return f.Level == Fail || f.Level == Warn }) {
		out = append(out, ok("pod MTU %d fits underlay %s (%s, MTU %d)", podMTU, u.Name, kindName(u.Kind), u.MTU))
	}
	return out
}

// probeMTU sends a don't-fragment probe at the pod MTU to a sample of
// peers through the overlay.
func probeMTU(ctx context.Context, e *Env, podMTU int) []Finding {
	if e.Reach == nil {
		return []Finding{skip("path MTU probe not run: no prober here")}
	}
	dev := ""
	if len(e.Status.Devices) > 0 {
		dev = e.Status.Devices[0]
	}
	peers := overlayPeers(e.Status, dev, e.sample())
	if len(peers) == 0 {
		return nil
	}
	var lost []string
	for _, p := range peers {
		answered, err := e.Reach.DF(ctx, p, podMTU)
		if err != nil {
			return []Finding{{Level: Warn, Message: fmt.Sprintf("path MTU probe: %v", err)}}
		}
		if !answered {
			lost = append(lost, p.String())
		}
	}
	if len(lost) > 0 {
		return []Finding{{Level: Fail,
			Message: fmt.Sprintf("don't-fragment probes of %d bytes got no answer from %d/%d sampled peers (%s): the path does not carry the pod MTU",
				podMTU, len(lost), len(peers), strings.Join(lost, ", ")),
			Fix: "lower the network config's Backend.MTU (the path's MTU minus the backend's overhead) and restart flanneld"}}
	}
	return []Finding{ok("don't-fragment probes of %d bytes reached %d/%d sampled peers", podMTU, len(peers), len(peers))}
}

// defaultRouteDevice returns the device of the default route other than
// skip (a tunnel without a parent sends where the routing table says).
func defaultRouteDevice(h Host, byName map[string]Link, skip string) (Link, bool) {
	routes, err := h.Routes()
	if err != nil {
		return Link{}, false
	}
	for _, r := range routes {
		if r.Dst.Bits() == 0 && r.Dst.Addr().Is4() && r.Dev != skip && (r.Table == 254 || r.Table == 0) {
			l, ok := byName[r.Dev]
			return l, ok
		}
	}
	return Link{}, false
}

func kindName(k string) string {
	if k == "" {
		return "device"
	}
	return k
}
