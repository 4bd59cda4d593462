// Package subnetenv writes and reads subnet.env, the file through which
// flanneld tells the CNI plugin (and an operator's scripts) which subnet
// this host leased. The keys are upstream's, so upstream's CNI plugin can
// read our file and ours can read upstream's.
//
// Upstream's flanneld writes, with no quoting, in this order and each line
// ending in a newline: FLANNEL_NETWORK and FLANNEL_SUBNET when IPv4 is
// enabled, FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET when IPv6 is,
// then always FLANNEL_MTU and FLANNEL_IPMASQ (true or false). An IPv6-only
// node's file has no FLANNEL_NETWORK or FLANNEL_SUBNET. The network keys
// may hold a comma-separated list: upstream's CNI plugin, and flanneld's
// own read-back, split them on commas (flanneld releases with
// multi-cluster-CIDR support wrote one entry per cluster network), and
// the plugin routes to each. Reading is more lenient than upstream's
// plugin in what an operator's hand edit may bring — quotes, spaces
// around keys and values, comments, CRLF — but never reads a value
// upstream writes differently.
package subnetenv

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/weft-net/weft/internal/atomicfile"
)

// Env is the content of subnet.env.
type Env struct {
	// Networks is FLANNEL_NETWORK: the IPv4 cluster networks, usually
	// one, in the order listed and without duplicates.
	Networks []netip.Prefix
	// Subnet is FLANNEL_SUBNET: the first usable address of the lease with
	// the lease's prefix length (10.5.52.1/24), the gateway address the
	// bridge takes.
	Subnet netip.Prefix
	// IPv6Networks is FLANNEL_IPV6_NETWORK, as Networks.
	IPv6Networks []netip.Prefix
	IPv6Subnet   netip.Prefix // FLANNEL_IPV6_SUBNET
	MTU          int          // FLANNEL_MTU
	IPMasq       bool         // FLANNEL_IPMASQ
}

// GatewayOf returns the FLANNEL_SUBNET form of a leased subnet: its first
// usable address with the subnet's length.
func GatewayOf(subnet netip.Prefix) netip.Prefix {
	if !subnet.IsValid() {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(subnet.Masked().Addr().Next(), subnet.Bits())
}

// LeasedSubnet turns a FLANNEL_SUBNET value back into the leased subnet.
func LeasedSubnet(p netip.Prefix) netip.Prefix {
	if !p.IsValid() {
		return p
	}
	return p.Masked()
}

// Marshal renders e as upstream's flanneld does: same keys, order and
// formatting, so upstream's CNI plugin reads it, and a node with one
// cluster network per family gets upstream's bytes exactly.
// A key whose value is unset is left out rather than written as text no
// reader could parse; the daemon always sets a family's pair together.
func (e Env) Marshal() []byte {
	var b bytes.Buffer
	if len(e.Networks) > 0 {
		fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", joinPrefixes(e.Networks))
	}
	if e.Subnet.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_SUBNET=%s\n", e.Subnet)
	}
	if len(e.IPv6Networks) > 0 {
		fmt.Fprintf(&b, "FLANNEL_IPV6_NETWORK=%s\n", joinPrefixes(e.IPv6Networks))
	}
	if e.IPv6Subnet.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_IPV6_SUBNET=%s\n", e.IPv6Subnet)
	}
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\nFLANNEL_IPMASQ=%t\n", e.MTU, e.IPMasq)
	return b.Bytes()
}

// Write writes e to path atomically: a reader (the CNI plugin, racing a
// pod start) sees either the old file or the new one, never a torn one.
// It is a no-op when the file already holds exactly this content. An
// error is one line naming path and the system's reason ("write
// /run/flannel/subnet.env: create temporary file: read-only file system").
func Write(path string, e Env) error {
	if Holds(path, e) {
		return nil
	}
	return atomicfile.Write(path, e.Marshal(), 0o644)
}

// Holds reports whether the file at path holds exactly what Write would
// write for e.
func Holds(path string, e Env) bool {
	old, err := os.ReadFile(path)
	return err == nil && bytes.Equal(old, e.Marshal())
}

// Parse reads subnet.env content. Unknown keys, comments and blank lines
// are ignored; a known key with a bad value is an error naming it.
func Parse(data []byte) (Env, error) {
	var e Env
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return e, fmt.Errorf("line %d: no '=' in %q", n, line)
		}
		k, v = strings.TrimSpace(k), strings.Trim(strings.TrimSpace(v), `"'`)
		var err error
		switch k {
		case "FLANNEL_NETWORK":
			e.Networks, err = parsePrefixList(v, true)
		case "FLANNEL_SUBNET":
			e.Subnet, err = parsePrefix(v, true)
		case "FLANNEL_IPV6_NETWORK":
			e.IPv6Networks, err = parsePrefixList(v, false)
		case "FLANNEL_IPV6_SUBNET":
			e.IPv6Subnet, err = parsePrefix(v, false)
		case "FLANNEL_MTU":
			e.MTU, err = strconv.Atoi(v)
			if err == nil && (e.MTU < 0 || e.MTU > 65535) {
				err = fmt.Errorf("%d out of range", e.MTU)
			}
		case "FLANNEL_IPMASQ":
			e.IPMasq, err = strconv.ParseBool(v)
		default:
			continue
		}
		if err != nil {
			return e, fmt.Errorf("%s: %q: %w", k, v, err)
		}
	}
	return e, sc.Err()
}

// parsePrefixList parses a comma-separated list of prefixes of one
// family, dropping repeats of a network as upstream's plugin does.
func parsePrefixList(s string, v4 bool) ([]netip.Prefix, error) {
	var out []netip.Prefix
	seen := map[netip.Prefix]bool{}
	for _, f := range strings.Split(s, ",") {
		p, err := parsePrefix(strings.TrimSpace(f), v4)
		if err != nil {
			return nil, err
		}
		if !seen[p.Masked()] {
			seen[p.Masked()] = true
			out = append(out, p)
		}
	}
	return out, nil
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

func parsePrefix(s string, v4 bool) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, err
	}
	if p.Addr().Is4() != v4 {
		return netip.Prefix{}, fmt.Errorf("wrong address family")
	}
	return p, nil
}

// Read reads and parses the file at path.
func Read(path string) (Env, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Env{}, err
	}
	e, err := Parse(data)
	if err != nil {
		return e, fmt.Errorf("subnet file %s: %w", path, err)
	}
	return e, nil
}
