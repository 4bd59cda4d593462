package app

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/backend/wireguard"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/dataplane/udptun"
	"github.com/weft-net/weft/internal/dataplane/wguser"
	"github.com/weft-net/weft/internal/metrics"
)

// openDataplane opens the kernel dataplane in our own network namespace.
// WireGuard devices are the kernel's where it has the module; otherwise
// (--wireguard-device auto or userspace) wireguard-go serves them from
// this process, with the standard UAPI socket so that wg(8) and wgctrl
// see them as they would a kernel device. Such a device ends with the
// process: a restart recreates it (docs/MIGRATION.md says what that
// costs).
func openDataplane(log *slog.Logger, opts config.Options) (*dataplane.Netlink, error) {
	log = log.With("component", "dataplane")
	create := func(name string, mtu int) (dataplane.WGDevice, error) {
		self, err := netns.Get()
		if err != nil {
			return nil, fmt.Errorf("userspace WireGuard device %s: own network namespace: %w", name, err)
		}
		defer self.Close() // Create keeps a copy of its own
		return wguser.Create(log.With("device", name), self, name, mtu)
	}
	// The udp backend's flannel0 is served the same way, by udptun; its
	// TUN is not persistent, so it ends with the process, as upstream's.
	udp := func(s dataplane.UDPSpec) (dataplane.UDPDevice, error) {
		return udptun.Create(log.With("device", s.Name), netns.None(), udptun.Config{Name: s.Name, Local: s.Local, Port: s.Port})
	}
	return dataplane.NewNetlink(log, netns.None(), dataplane.WireGuard(opts.WireGuardDevice, create), dataplane.UDP(udp))
}

// wgStatsEvery is how often the WireGuard devices may be read for the
// metrics. A read lists every peer through the wgctrl client the
// reconcile passes also use (one at a time), so unthrottled scrapes could
// delay a pass; handshake ages a second or two old are as good.
const wgStatsEvery = 2 * time.Second

// readAtMostEvery returns read, called at most once per interval: callers
// within it get the last result, and concurrent callers wait for one call
// and share it.
func readAtMostEvery[T any](interval time.Duration, read func() T) func() T {
	var (
		mu   sync.Mutex
		at   time.Time
		last T
	)
	return func() T {
		mu.Lock()
		defer mu.Unlock()
		if at.IsZero() || time.Since(at) >= interval {
			last, at = read(), time.Now()
		}
		return last
	}
}

// wireGuardStats reads our WireGuard devices for the metrics, at scrape
// time; devices that do not exist (another backend) are left out.
func wireGuardStats(dp *dataplane.Netlink) func() []metrics.WireGuardDevice {
	return func() []metrics.WireGuardDevice {
		var out []metrics.WireGuardDevice
		for _, name := range []string{wireguard.Device, wireguard.DeviceV6} {
			st, ok, err := dp.WireGuard(name)
			if err != nil || !ok {
				continue
			}
			d := metrics.WireGuardDevice{Name: name, Impl: st.Impl}
			for _, p := range st.Peers {
				age := time.Duration(-1)
				if !p.LatestHandshake.IsZero() {
					age = time.Since(p.LatestHandshake)
				}
				d.Handshakes = append(d.Handshakes, age)
				d.RxBytes += p.RxBytes
				d.TxBytes += p.TxBytes
			}
			out = append(out, d)
		}
		return out
	}
}
