package masq

import (
	"errors"
	"fmt"
	"net/netip"
)

// KubeProxyMark is the packet-mark bit kube-proxy sets on traffic it has
// already decided to masquerade itself; flannel leaves such packets alone
// so they are not NATed twice (a double-NAT bug on some kernels).
const KubeProxyMark uint32 = 0x4000

// Multicast destinations are never masqueraded: the replies, if any, do not
// come back through conntrack.
var (
	multicastV4 = netip.MustParsePrefix("224.0.0.0/4")
	multicastV6 = netip.MustParsePrefix("ff00::/8")
)

// Config is what the rules depend on. A family is configured when its
// Network is valid; its Subnet (this host's lease) is then required for
// masquerading.
type Config struct {
	// Network is the IPv4 cluster network; the zero Prefix means IPv4 is off.
	Network netip.Prefix
	// Subnet is this host's IPv4 lease subnet inside Network.
	Subnet netip.Prefix
	// IPv6Network is the IPv6 cluster network; the zero Prefix means IPv6 is off.
	IPv6Network netip.Prefix
	// IPv6Subnet is this host's IPv6 lease subnet inside IPv6Network.
	IPv6Subnet netip.Prefix

	// Masquerade is --ip-masq.
	Masquerade bool
	// FullyRandom asks for fully-random source ports on masquerade; the
	// daemon sets it unless --ip-masq-fully-random-disable. A Manager drops
	// it when the host's tools or kernel cannot do it.
	FullyRandom bool
	// Forward is --iptables-forward-rules: accept forwarded traffic from
	// and to the cluster network.
	Forward bool
}

// Validate reports a Config that Plan cannot turn into complete rules.
func (c Config) Validate() error {
	var errs []error
	check := func(name string, network, subnet netip.Prefix, is4 bool) {
		if !network.IsValid() {
			if subnet.IsValid() {
				errs = append(errs, fmt.Errorf("%s subnet %s given without a network", name, subnet))
			}
			return
		}
		if network.Addr().Is4() != is4 || network.Addr().Is4In6() {
			errs = append(errs, fmt.Errorf("%s network %s has the wrong address family", name, network))
			return
		}
		if !c.Masquerade {
			return
		}
		switch {
		case !subnet.IsValid():
			errs = append(errs, fmt.Errorf("%s masquerade needs this host's subnet", name))
		case subnet.Addr().Is4() != is4 || subnet.Bits() < network.Bits() || !network.Contains(subnet.Addr()):
			errs = append(errs, fmt.Errorf("%s subnet %s is not inside network %s", name, subnet, network))
		}
	}
	check("IPv4", c.Network, c.Subnet, true)
	check("IPv6", c.IPv6Network, c.IPv6Subnet, false)
	return errors.Join(errs...)
}

// RuleSet is the desired state for both address families.
type RuleSet struct {
	IPv4 FamilyRules
	IPv6 FamilyRules
}

// FamilyRules are one address family's rules, in evaluation order. An empty
// list means that chain must not exist.
type FamilyRules struct {
	// Masquerade is the NAT postrouting chain.
	Masquerade []Rule
	// Forward is the filter forward chain.
	Forward []Rule
}

// Action is what a Rule does with a matching packet.
type Action int

const (
	// ActionReturn leaves the packet alone (stops evaluating our chain).
	ActionReturn Action = iota + 1
	// ActionMasquerade source-NATs the packet to the outgoing interface's
	// address.
	ActionMasquerade
	// ActionAccept lets the packet be forwarded.
	ActionAccept
)

func (a Action) String() string {
	switch a {
	case ActionReturn:
		return "return"
	case ActionMasquerade:
		return "masquerade"
	case ActionAccept:
		return "accept"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// Match is an address match; the zero Match matches any address.
type Match struct {
	Prefix netip.Prefix
	// Not inverts the match.
	Not bool
}

// Rule is one rule, independent of the tool that programs it.
type Rule struct {
	Src, Dst Match
	// Mark, when non-zero, matches packets whose mark has all these bits set.
	Mark   uint32
	Action Action
	// FullyRandom applies to Masquerade only.
	FullyRandom bool
}

// Plan returns the rules for cfg, in upstream flannel's order. It is pure;
// cfg should pass Validate (a family without a subnet gets no masquerade
// rules rather than half of them).
func Plan(cfg Config) RuleSet {
	return RuleSet{
		IPv4: planFamily(cfg, cfg.Network, cfg.Subnet, multicastV4),
		IPv6: planFamily(cfg, cfg.IPv6Network, cfg.IPv6Subnet, multicastV6),
	}
}

func planFamily(cfg Config, network, subnet, multicast netip.Prefix) FamilyRules {
	var fr FamilyRules
	if !network.IsValid() {
		return fr
	}
	cluster := network.Masked()
	if cfg.Masquerade && subnet.IsValid() {
		pod := subnet.Masked()
		in := func(p netip.Prefix) Match { return Match{Prefix: p} }
		notIn := func(p netip.Prefix) Match { return Match{Prefix: p, Not: true} }
		fr.Masquerade = []Rule{
			// kube-proxy masquerades these itself.
			{Mark: KubeProxyMark, Action: ActionReturn},
			// Pod to pod, in either direction, keeps its addresses: the
			// overlay routes them.
			{Src: in(pod), Dst: in(cluster), Action: ActionReturn},
			{Src: in(cluster), Dst: in(pod), Action: ActionReturn},
			// Traffic from outside the cluster to a local pod (e.g. a
			// NodePort forwarded by this host) keeps its client address.
			{Src: notIn(cluster), Dst: in(pod), Action: ActionReturn},
			// Pods leaving the cluster network are hidden behind the host.
			{Src: in(cluster), Dst: notIn(multicast), Action: ActionMasquerade, FullyRandom: cfg.FullyRandom},
			// The host (or anything outside the cluster) talking to remote
			// pods: masquerade, so the reply comes back over the overlay.
			{Src: notIn(cluster), Dst: in(cluster), Action: ActionMasquerade, FullyRandom: cfg.FullyRandom},
		}
	}
	if cfg.Forward {
		fr.Forward = []Rule{
			{Src: Match{Prefix: cluster}, Action: ActionAccept},
			{Dst: Match{Prefix: cluster}, Action: ActionAccept},
		}
	}
	return fr
}

// family names one address family inside the managers.
type family int

const (
	ipv4 family = iota
	ipv6
)

func (f family) String() string {
	if f == ipv6 {
		return "IPv6"
	}
	return "IPv4"
}

func (rs RuleSet) family(f family) FamilyRules {
	if f == ipv6 {
		return rs.IPv6
	}
	return rs.IPv4
}
