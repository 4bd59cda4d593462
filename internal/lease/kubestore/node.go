package kubestore

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	corev1 "k8s.io/api/core/v1"

	"github.com/weft-net/weft/internal/lease"
)

// families says which address families leases carry. The network config
// decides (a dual-stack cluster may run a v4-only flannel: the node's IPv6
// podCIDR is then none of our business); before it is known, every family
// a node publishes is taken.
type families struct {
	known      bool
	ipv4, ipv6 bool
}

func (f families) wants(v6 bool, present bool) bool {
	if !f.known {
		return present
	}
	if v6 {
		return f.ipv6
	}
	return f.ipv4
}

// podCIDRs returns the node's IPv4 and IPv6 pod subnets. kube-controller-
// manager fills spec.podCIDRs (one per family) and mirrors the first into
// spec.podCIDR; older clusters have only the latter.
func podCIDRs(spec corev1.NodeSpec) (v4, v6 netip.Prefix, err error) {
	cidrs := spec.PodCIDRs
	if len(cidrs) == 0 && spec.PodCIDR != "" {
		cidrs = []string{spec.PodCIDR}
	}
	if len(cidrs) > 2 {
		return v4, v6, fmt.Errorf("%d podCIDRs, want one per address family", len(cidrs))
	}
	for _, s := range cidrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("podCIDR %q: %w", s, err)
		}
		p = p.Masked()
		if p.Addr().Is4() {
			if v4.IsValid() {
				return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("two IPv4 podCIDRs %s and %s", v4, p)
			}
			v4 = p
		} else {
			if v6.IsValid() {
				return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("two IPv6 podCIDRs %s and %s", v6, p)
			}
			v6 = p
		}
	}
	return v4, v6, nil
}

// entry is what the watch keeps per managed node: the lease it maps to, or
// why it could not be decoded. It holds no reference to the Node object,
// so thousands of nodes cost a few hundred bytes each, not the tens of
// kilobytes of a Node with its images and conditions.
type entry struct {
	lease lease.Lease
	err   error
}

// same reports whether a change from e to o is invisible to the daemon:
// kubelet rewrites the node status every few seconds, and none of that is
// a lease event.
func (e entry) same(o entry) bool {
	if e.lease.ID() != o.lease.ID() || (e.err == nil) != (o.err == nil) {
		return false
	}
	if e.err != nil {
		return e.err.Error() == o.err.Error()
	}
	return e.lease.Attrs.Equal(o.lease.Attrs)
}

// errNotManaged marks a node without our kube-subnet-manager annotation:
// no flannel (or not yet) runs there.
var errNotManaged = errors.New("node not managed by flannel")

// decode maps a node to its lease. It returns errNotManaged for nodes that
// are not peers; any other error describes a malformed node, and the
// entry then carries whatever subnets did parse, so the daemon can drop an
// earlier version of the lease.
func (a Annotations) decode(n *corev1.Node, fam families) (entry, error) {
	ann := n.Annotations
	if ann[a.SubnetKubeManaged] != "true" {
		return entry{}, errNotManaged
	}
	var e entry
	e.lease.Revision = revision(n.ResourceVersion)
	v4, v6, err := podCIDRs(n.Spec)
	if err != nil {
		e.err = fmt.Errorf("node %s: %w", n.Name, err)
		return e, nil
	}
	e.lease.Attrs.BackendType = ann[a.BackendType]
	var errs []error
	if fam.wants(false, v4.IsValid() && ann[a.PublicIP] != "") {
		if !v4.IsValid() {
			errs = append(errs, errors.New("no IPv4 podCIDR"))
		}
		e.lease.Subnet = v4
		ip, err := parseIP(ann[a.PublicIP], false)
		if err != nil {
			errs = append(errs, fmt.Errorf("annotation %s: %w", a.PublicIP, err))
		}
		e.lease.Attrs.PublicIP = ip
		d, err := backendData(ann[a.BackendData])
		if err != nil {
			errs = append(errs, fmt.Errorf("annotation %s: %w", a.BackendData, err))
		}
		e.lease.Attrs.BackendData = d
	}
	if fam.wants(true, v6.IsValid() && ann[a.PublicIPv6] != "") {
		if !v6.IsValid() {
			errs = append(errs, errors.New("no IPv6 podCIDR"))
		}
		e.lease.IPv6Subnet = v6
		ip, err := parseIP(ann[a.PublicIPv6], true)
		if err != nil {
			errs = append(errs, fmt.Errorf("annotation %s: %w", a.PublicIPv6, err))
		}
		e.lease.Attrs.PublicIPv6 = ip
		d, err := backendData(ann[a.BackendV6Data])
		if err != nil {
			errs = append(errs, fmt.Errorf("annotation %s: %w", a.BackendV6Data, err))
		}
		e.lease.Attrs.BackendV6Data = d
	}
	if !e.lease.Subnet.IsValid() && !e.lease.IPv6Subnet.IsValid() && len(errs) == 0 {
		errs = append(errs, errors.New("no podCIDR with a public IP"))
	}
	if err := errors.Join(errs...); err != nil {
		e.err = fmt.Errorf("node %s: %w", n.Name, err)
		e.lease.Attrs = lease.Attrs{}
	}
	return e, nil
}

func parseIP(s string, v6 bool) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	case v6 && (!ip.Is6() || ip.Is4In6() || ip.Zone() != ""):
		return netip.Addr{}, fmt.Errorf("%q is not an IPv6 address", s)
	case !v6 && !ip.Is4():
		return netip.Addr{}, fmt.Errorf("%q is not an IPv4 address", s)
	case ip.IsUnspecified():
		return netip.Addr{}, fmt.Errorf("%q is unspecified", s)
	}
	return ip, nil
}

// backendData returns the annotation's JSON; upstream writes "null" when
// a backend (host-gw) has none.
func backendData(s string) (json.RawMessage, error) {
	if s == "" || s == "null" {
		return nil, nil
	}
	if !json.Valid([]byte(s)) {
		return nil, fmt.Errorf("%.40q is not JSON", s)
	}
	return json.RawMessage(s), nil
}

// revision turns a resourceVersion into the lease revision. Clients must
// treat it as opaque, but kube-apiserver's is etcd's revision, a decimal
// integer, which orders changes the way lease.Batch.Revision wants; a
// server that differs gets 0 (unknown), which the daemon only logs.
func revision(rv string) int64 {
	r, err := strconv.ParseInt(rv, 10, 64)
	if err != nil {
		return 0
	}
	return r
}
