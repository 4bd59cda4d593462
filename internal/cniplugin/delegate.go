package cniplugin

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weft-net/weft/internal/subnetenv"
)

// BuildDelegate returns the delegate plugin's network configuration for a
// node whose flanneld wrote env. It neither modifies n nor does I/O, so
// ADD and a DEL without a saved configuration build the same thing.
func BuildDelegate(n NetConf, env subnetenv.Env) (map[string]any, error) {
	if err := validateSubnetEnv(env); err != nil {
		return nil, fmt.Errorf("subnet file: %w", err)
	}
	ipam, err := delegateIPAM(n.IPAM, env)
	if err != nil {
		return nil, err
	}

	d := maps.Clone(n.Delegate)
	if d == nil {
		d = map[string]any{}
	}
	d["name"] = n.Name
	d["cniVersion"] = n.CNIVersion
	d["type"] = n.delegateType()
	d["ipam"] = ipam
	// When flanneld masquerades pod traffic leaving the cluster network
	// (--ip-masq), the delegate must not masquerade it a second time; when
	// it does not, the delegate is the only one that can.
	setDefault(d, "ipMasq", !env.IPMasq)
	// FLANNEL_MTU is the overlay's MTU; a zero (a file without the key)
	// leaves the delegate's own default rather than configuring MTU 0.
	if env.MTU > 0 {
		setDefault(d, "mtu", env.MTU)
	}
	if d["type"] == "bridge" {
		// The bridge holds the subnet's first address and is the pods'
		// next hop towards the flannel device.
		setDefault(d, "isGateway", true)
	}
	if n.RuntimeConfig != nil {
		d["runtimeConfig"] = n.RuntimeConfig
	}
	return d, nil
}

// delegateIPAM completes the net conf's ipam section (possibly empty) with
// the node's subnets as host-local range sets (one per family, so a
// dual-stack pod gets one address of each) and a route to each cluster
// network subnet.env lists, IPv4 first, as upstream's plugin orders them.
func delegateIPAM(base map[string]any, env subnetenv.Env) (map[string]any, error) {
	ipam := maps.Clone(base)
	if ipam == nil {
		ipam = map[string]any{}
	}
	setDefault(ipam, "type", "host-local")

	var ranges []any
	var networks []netip.Prefix
	if env.Subnet.IsValid() {
		ranges = append(ranges, rangeSet(env.Subnet))
		networks = appendMasked(networks, env.Networks)
	}
	if env.IPv6Subnet.IsValid() {
		ranges = append(ranges, rangeSet(env.IPv6Subnet))
		networks = appendMasked(networks, env.IPv6Networks)
	}
	ipam["ranges"] = ranges

	routes, err := withClusterRoutes(base["routes"], networks)
	if err != nil {
		return nil, err
	}
	ipam["routes"] = routes
	return ipam, nil
}

func appendMasked(dst, ps []netip.Prefix) []netip.Prefix {
	for _, p := range ps {
		dst = append(dst, p.Masked())
	}
	return dst
}

// rangeSet is a host-local range set holding the leased subnet; host-local
// then takes the subnet's first address as the gateway (the address
// FLANNEL_SUBNET names) and never hands it out.
func rangeSet(flannelSubnet netip.Prefix) []any {
	return []any{map[string]any{"subnet": subnetenv.LeasedSubnet(flannelSubnet).String()}}
}

// withClusterRoutes appends a route to each cluster network to the
// routes the net conf's ipam lists, keeping those as written and skipping
// networks they already route.
func withClusterRoutes(configured any, networks []netip.Prefix) ([]any, error) {
	routes, have, err := parseRoutes(configured)
	if err != nil {
		return nil, err
	}
	for _, nw := range networks {
		if !have[nw] {
			have[nw] = true
			routes = append(routes, map[string]any{"dst": nw.String()})
		}
	}
	return routes, nil
}

// parseRoutes validates the net conf's ipam.routes and returns them
// unchanged together with the set of destinations they cover.
func parseRoutes(configured any) ([]any, map[netip.Prefix]bool, error) {
	have := map[netip.Prefix]bool{}
	if configured == nil {
		return []any{}, have, nil
	}
	list, ok := configured.([]any)
	if !ok {
		return nil, nil, fmt.Errorf(`"ipam.routes" must be a list of routes`)
	}
	raw, err := json.Marshal(list)
	if err != nil {
		return nil, nil, fmt.Errorf(`"ipam.routes": %w`, err)
	}
	var parsed []types.Route
	if err := json.Unmarshal(raw, &parsed); err != nil {
		return nil, nil, fmt.Errorf(`"ipam.routes": %w`, err)
	}
	for _, r := range parsed {
		ones, _ := r.Dst.Mask.Size()
		if addr, ok := netip.AddrFromSlice(r.Dst.IP); ok {
			have[netip.PrefixFrom(addr.Unmap(), ones).Masked()] = true
		}
	}
	return append([]any{}, list...), have, nil
}

func setDefault(m map[string]any, key string, value any) {
	if _, ok := m[key]; !ok {
		m[key] = value
	}
}
