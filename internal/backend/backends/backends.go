// Package backends is the one list of backends: a new backend is its own
// package under internal/backend and one line here.
package backends

import (
	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/backend/hostgw"
	"github.com/weft-net/weft/internal/backend/vxlan"
	"github.com/weft-net/weft/internal/backend/wireguard"
	"github.com/weft-net/weft/internal/config"
)

// Factories maps each supported network config Backend.Type to its
// factory. It returns a new map each time: nothing package-level to
// mutate.
func Factories() map[string]backend.Factory {
	return map[string]backend.Factory{
		config.BackendVXLAN:     vxlan.Factory,
		config.BackendHostGW:    hostgw.Factory,
		config.BackendWireGuard: wireguard.Factory,
	}
}
