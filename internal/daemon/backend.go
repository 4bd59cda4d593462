package daemon

import (
	"crypto/rand"
	"fmt"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/backend/hostgw"
	"github.com/weft-net/weft/internal/backend/vxlan"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

// The backend this host runs, and the attributes it publishes in its lease.

// makeBackend builds the backend and returns the attributes to publish,
// plus a function that derives them from an existing lease of ours.
func (d *daemon) makeBackend(u backend.Underlay) (lease.Attrs, func(lease.Lease) lease.Attrs, error) {
	switch d.net.Backend.Type {
	case config.BackendHostGW:
		b := hostgw.New(d.net, u)
		d.backend = b
		a := lease.Attrs{PublicIP: ipIf(d.net.EnableIPv4, u.PublicIP), PublicIPv6: ipIf(d.net.EnableIPv6, u.PublicIPv6),
			BackendType: config.BackendHostGW}
		return a, nil, nil
	case config.BackendVXLAN:
		mac4, kept4, err := d.vtepMAC(vxlan.DeviceName(d.net.Backend.VNI, false), d.net.EnableIPv4)
		if err != nil {
			return lease.Attrs{}, nil, err
		}
		mac6, kept6, err := d.vtepMAC(vxlan.DeviceName(d.net.Backend.VNI, true), d.net.EnableIPv6)
		if err != nil {
			return lease.Attrs{}, nil, err
		}
		b := vxlan.New(d.net, u, mac4, mac6)
		// Before the kernel sees it: the kernel would clamp the device
		// MTU at creation and refuse it on every later pass.
		if err := b.CheckUnderlay(); err != nil {
			return lease.Attrs{}, nil, wrapNetConfig(err)
		}
		d.backend = b
		// The device is gone (a reboot) but our lease survived: take the MAC
		// back from the lease, so peers' tables stay right.
		reuse := func(existing lease.Lease) lease.Attrs {
			m4, m6 := mac4, mac6
			if _, m, err := vxlan.DecodeData(existing.Attrs.BackendData); err == nil && !kept4 && d.net.EnableIPv4 {
				m4 = m
			}
			if _, m, err := vxlan.DecodeData(existing.Attrs.BackendV6Data); err == nil && !kept6 && d.net.EnableIPv6 {
				m6 = m
			}
			nb := vxlan.New(d.net, u, m4, m6)
			d.backend = nb
			return nb.Attrs()
		}
		return b.Attrs(), reuse, nil
	default:
		return lease.Attrs{}, nil, fmt.Errorf("backend type %q is not supported", d.net.Backend.Type)
	}
}

// vtepMAC keeps the device MAC stable across restarts: peers have it in
// their neighbour and FDB tables, and a new one would black-hole traffic
// to us until every peer saw our updated lease. kept reports that it came
// from an existing device.
func (d *daemon) vtepMAC(dev string, enabled bool) (mac dataplane.MAC, kept bool, err error) {
	if !enabled {
		return dataplane.MAC{}, false, nil
	}
	if l, ok, err := d.cfg.Dataplane.LinkByName(dev); err != nil {
		return dataplane.MAC{}, false, fmt.Errorf("look up %s: %w", dev, err)
	} else if ok && !l.MAC.IsZero() {
		return l.MAC, true, nil
	}
	mac, err = randomMAC()
	return mac, false, err
}

// randomMAC returns a locally administered unicast MAC.
func randomMAC() (dataplane.MAC, error) {
	var m dataplane.MAC
	if _, err := rand.Read(m[:]); err != nil {
		return m, fmt.Errorf("random MAC: %w", err)
	}
	m[0] = m[0]&^1 | 2
	return m, nil
}

func ipIf[T any](ok bool, v T) T {
	if ok {
		return v
	}
	var zero T
	return zero
}
