package doctor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"strings"
)

// The sysctl and netfilter checks: forwarding on, reverse-path filtering
// not strict on the devices pod traffic crosses, bridged pod traffic seen
// by iptables in Kubernetes mode, and a FORWARD chain that lets the
// cluster's traffic through.

// perFamily picks, of a sysctl's IPv4 and IPv6 names, those of the
// address families the cluster network has (IPv4 alone without a daemon
// status).
func perFamily(e *Env, v4name, v6name string) []string {
	v4, v6 := true, false
	if e.Status != nil {
		v4, v6 = e.Status.Host.Network != "" || e.Status.Host.IPv6Network == "", e.Status.Host.IPv6Network != ""
	}
	var names []string
	if v4 {
		names = append(names, v4name)
	}
	if v6 {
		names = append(names, v6name)
	}
	return names
}

func setSysctl(name, value string) func(Host) error {
	return func(h Host) error { return h.SetSysctl(name, value) }
}

func checkIPForward(_ context.Context, e *Env) []Finding {
	var out []Finding
	for _, name := range perFamily(e, "net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding") {
		v, err := e.Host.Sysctl(name)
		switch {
		case err != nil:
			out = append(out, Finding{Level: Warn, Message: fmt.Sprintf("cannot read %s: %v", dotted(name), err)})
		case v == "0":
			out = append(out, Finding{Level: Fail,
				Message: fmt.Sprintf("%s is 0: this host does not forward packets, so pods are cut off from other hosts", dotted(name)),
				Fix:     fmt.Sprintf("sysctl -w %s=1 (and in /etc/sysctl.d/ to keep it)", dotted(name)), Fixable: true,
				apply: setSysctl(name, "1")})
		default:
			out = append(out, ok("%s is %s", dotted(name), v))
		}
	}
	return out
}

// checkRPFilter: strict reverse-path filtering (1) drops packets whose
// source the host would not route back out of the same device — pod
// traffic arriving over an underlay with several paths, or on our
// devices in asymmetric setups. The effective value is the larger of
// conf/all and conf/<dev>, so loose (2) on the device alone fixes it.
func checkRPFilter(_ context.Context, e *Env) []Finding {
	if e.Status == nil {
		return []Finding{skip("no daemon status: the devices to check are unknown")}
	}
	all, _ := e.Host.Sysctl("net/ipv4/conf/all/rp_filter")
	devs := slices.Clone(e.Status.Devices)
	if u := e.Status.Host.Underlay; u != "" {
		devs = append([]string{u}, devs...)
	}
	var out []Finding
	var fine []string
	for _, d := range devs {
		v, err := e.Host.Sysctl("net/ipv4/conf/" + d + "/rp_filter")
		if errors.Is(err, fs.ErrNotExist) {
			continue // an IPv6-only device, or not there yet
		}
		if err != nil {
			out = append(out, Finding{Level: Warn, Message: fmt.Sprintf("cannot read rp_filter of %s: %v", d, err)})
			continue
		}
		if max(v, all) == "1" {
			name := "net/ipv4/conf/" + d + "/rp_filter"
			out = append(out, Finding{Level: Warn,
				Message: fmt.Sprintf("rp_filter is strict on %s (all=%s, %s=%s): packets from pods whose route back leaves by another device are dropped", d, all, d, v),
				Fix:     fmt.Sprintf("sysctl -w %s=2 (loose: still drops unroutable sources)", dotted(name)), Fixable: true,
				apply: setSysctl(name, "2")})
			continue
		}
		fine = append(fine, d+"="+max(v, all))
	}
	if len(fine) > 0 {
		out = append(out, ok("rp_filter not strict on %s", strings.Join(fine, ", ")))
	}
	return out
}

// checkBridgeNetfilter: in Kubernetes mode, traffic between pods on one
// bridge must pass iptables (kube-proxy's service rules); without
// br_netfilter, or with bridge-nf-call-iptables 0, it bypasses them.
func checkBridgeNetfilter(_ context.Context, e *Env) []Finding {
	if e.Status == nil {
		return []Finding{skip("no daemon status: Kubernetes mode unknown")}
	}
	if !e.Status.Host.Kube {
		return []Finding{skip("not in Kubernetes mode (--kube-subnet-mgr)")}
	}
	var out []Finding
	for _, name := range perFamily(e, "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables") {
		v, err := e.Host.Sysctl(name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			out = append(out, Finding{Level: Fail, Message: "br_netfilter is not loaded: bridged pod traffic bypasses kube-proxy's rules",
				Fix: fmt.Sprintf("modprobe br_netfilter (and list it in /etc/modules-load.d/), then sysctl -w %s=1", dotted(name))})
		case err != nil:
			out = append(out, Finding{Level: Warn, Message: fmt.Sprintf("cannot read %s: %v", dotted(name), err)})
		case v == "0":
			out = append(out, Finding{Level: Fail, Message: fmt.Sprintf("%s is 0: bridged pod traffic bypasses kube-proxy's rules", dotted(name)),
				Fix: fmt.Sprintf("sysctl -w %s=1", dotted(name)), Fixable: true, apply: setSysctl(name, "1")})
		default:
			out = append(out, ok("%s is %s", dotted(name), v))
		}
	}
	return out
}

// checkForwardPolicy: a FORWARD policy of DROP (Docker sets it) drops
// pod traffic between hosts unless a rule accepts the cluster network:
// ours (FLANNEL-FWD, --iptables-forward-rules) or the administrator's.
func checkForwardPolicy(_ context.Context, e *Env) []Finding {
	c, err := e.Host.Forward()
	if err != nil {
		return []Finding{skip("cannot read the FORWARD chain: %v", err)}
	}
	if c.Policy != "DROP" && c.Policy != "REJECT" {
		return []Finding{ok("FORWARD policy %s", c.Policy)}
	}
	for _, r := range c.Rules {
		if strings.Contains(r, "-j FLANNEL-FWD") {
			return []Finding{ok("FORWARD policy %s; FLANNEL-FWD accepts the cluster network", c.Policy)}
		}
	}
	nets := clusterNetworks(e)
	for _, r := range c.Rules {
		for _, n := range nets {
			if strings.Contains(r, n.String()) && strings.HasSuffix(r, "-j ACCEPT") {
				return []Finding{ok("FORWARD policy %s; a rule accepts %s", c.Policy, n)}
			}
		}
	}
	fix := "run flanneld with --iptables-forward-rules (the default), or accept the cluster network in FORWARD (iptables -A FORWARD -s <network> -j ACCEPT; and -d)"
	if e.Status != nil && e.Status.Host.ForwardRules {
		fix = "flanneld runs with --iptables-forward-rules but its FLANNEL-FWD jump is missing: see weft status (rules) and flanneld's log"
	}
	return []Finding{{Level: Fail, Message: fmt.Sprintf("FORWARD policy %s and no rule accepts the cluster network: pod traffic between hosts is dropped", c.Policy), Fix: fix}}
}

// clusterNetworks returns the cluster networks the daemon reports.
func clusterNetworks(e *Env) []netip.Prefix {
	if e.Status == nil {
		return nil
	}
	var out []netip.Prefix
	for _, s := range []string{e.Status.Host.Network, e.Status.Host.IPv6Network} {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func dotted(name string) string { return strings.ReplaceAll(name, "/", ".") }
