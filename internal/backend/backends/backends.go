// Package backends is the one list of backends: a new backend is its own
// package under internal/backend and one line here.
package backends

import (
	"encoding/json"
	"slices"
	"strings"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/backend/alloc"
	"github.com/weft-net/weft/internal/backend/extension"
	"github.com/weft-net/weft/internal/backend/hostgw"
	"github.com/weft-net/weft/internal/backend/ipip"
	"github.com/weft-net/weft/internal/backend/udp"
	"github.com/weft-net/weft/internal/backend/vxlan"
	"github.com/weft-net/weft/internal/backend/wireguard"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

// Entry is one backend.
type Entry struct {
	// New makes the backend for the daemon.
	New backend.Factory
	// Identity renders, for people (weft leases, weft status, the demo),
	// what names a host to its peers in one family's backend data: the
	// VTEP MAC for vxlan, the public key for wireguard. Nil when the
	// backend has no data.
	Identity func(data json.RawMessage) (string, bool)
}

// All maps each supported network config Backend.Type to its entry. It
// returns a new map each time: nothing package-level to mutate.
func All() map[string]Entry {
	return map[string]Entry{
		config.BackendVXLAN:     {vxlan.Factory, vxlanIdentity},
		config.BackendHostGW:    {hostgw.Factory, nil},
		config.BackendWireGuard: {wireguard.Factory, wireguardIdentity},
		config.BackendAlloc:     {alloc.Factory, nil},
		config.BackendExtension: {extension.Factory, extensionIdentity},
		config.BackendIPIP:      {ipip.Factory, nil},
		config.BackendUDP:       {udp.Factory, nil},
	}
}

// Supported lists the types of All but except, sorted, for messages
// that suggest another backend.
func Supported(except string) []string {
	var out []string
	for typ := range All() {
		if typ != except && typ != config.BackendAlloc && typ != config.BackendExtension {
			out = append(out, typ)
		}
	}
	slices.Sort(out)
	return out
}

// Refused maps the backend types upstream ships and weft does not serve
// to why, for a one-line refusal at start that says what to use instead.
func Refused() map[string]string {
	return map[string]string{
		"tencent-vpc": "it programs Tencent Cloud VPC route tables through Tencent's API, which weft does not support; " +
			"use host-gw or vxlan (or alloc, with the route table managed outside flanneld)",
		// Upstream's ipsec installs XFRM policies and has strongSwan's charon
		// negotiate ESP SAs for them; the kernel weft is tested on has no ESP
		// (CONFIG_INET_ESP, CONFIG_INET6_ESP) nor GCM and cannot load modules,
		// so no ipsec packet could ever be proven to flow (README, "ipsec").
		"ipsec": "it could not be tested end to end (the CI kernel has no ESP), so weft does not ship it; " +
			"use wireguard, which encrypts the traffic between hosts as well",
	}
}

// Identity is Entry.Identity for a lease's data of one family (v6: its
// BackendV6Data), or "" when there is none or it does not decode.
func Identity(a lease.Attrs, v6 bool) string {
	e, ok := All()[a.BackendType]
	if !ok || e.Identity == nil {
		return ""
	}
	data := a.BackendData
	if v6 {
		data = a.BackendV6Data
	}
	if s, ok := e.Identity(data); ok {
		return s
	}
	return ""
}

func vxlanIdentity(data json.RawMessage) (string, bool) {
	_, mac, err := vxlan.DecodeData(data)
	return mac.String(), err == nil
}

func wireguardIdentity(data json.RawMessage) (string, bool) {
	d, err := wireguard.DecodeData(data)
	return d.PublicKey, err == nil
}

// extensionIdentity is the first line of the PreStartupCommand output a
// host published (a VTEP MAC in upstream's vxlan example).
func extensionIdentity(data json.RawMessage) (string, bool) {
	var s string
	if json.Unmarshal(data, &s) != nil {
		return "", false
	}
	first, _, _ := strings.Cut(s, "\n")
	return lease.Shorten(first), true
}
