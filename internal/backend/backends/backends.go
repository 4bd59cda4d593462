// Package backends is the one list of backends: a new backend is its own
// package under internal/backend and one line here.
package backends

import (
	"encoding/json"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/backend/hostgw"
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
		config.BackendUDP:       {udp.Factory, nil},
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
