package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestWireGuardMetrics(t *testing.T) {
	m := New("test")
	m.WatchWireGuard(func() []WireGuardDevice {
		return []WireGuardDevice{{
			Name: "flannel-wg", Impl: "userspace",
			Handshakes: []time.Duration{10 * time.Second, 100 * time.Second, -1},
			RxBytes:    1000, TxBytes: 2000,
		}}
	})
	problems, err := testutil.GatherAndLint(m.Registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "flannel_wireguard") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
	const want = `
# HELP flannel_wireguard_handshake_age_seconds Time since each peer's latest handshake, as a distribution over the peers that completed one.
# TYPE flannel_wireguard_handshake_age_seconds histogram
flannel_wireguard_handshake_age_seconds_bucket{device="flannel-wg",le="5"} 0
flannel_wireguard_handshake_age_seconds_bucket{device="flannel-wg",le="15"} 1
flannel_wireguard_handshake_age_seconds_bucket{device="flannel-wg",le="30"} 1
flannel_wireguard_handshake_age_seconds_bucket{device="flannel-wg",le="60"} 1
flannel_wireguard_handshake_age_seconds_bucket{device="flannel-wg",le="120"} 2
flannel_wireguard_handshake_age_seconds_bucket{device="flannel-wg",le="180"} 2
flannel_wireguard_handshake_age_seconds_bucket{device="flannel-wg",le="300"} 2
flannel_wireguard_handshake_age_seconds_bucket{device="flannel-wg",le="600"} 2
flannel_wireguard_handshake_age_seconds_bucket{device="flannel-wg",le="1800"} 2
flannel_wireguard_handshake_age_seconds_bucket{device="flannel-wg",le="3600"} 2
flannel_wireguard_handshake_age_seconds_bucket{device="flannel-wg",le="+Inf"} 2
flannel_wireguard_handshake_age_seconds_sum{device="flannel-wg"} 110
flannel_wireguard_handshake_age_seconds_count{device="flannel-wg"} 2
# HELP flannel_wireguard_peers WireGuard peers configured on the device.
# TYPE flannel_wireguard_peers gauge
flannel_wireguard_peers{device="flannel-wg"} 3
# HELP flannel_wireguard_peers_without_handshake Peers that have not completed a handshake.
# TYPE flannel_wireguard_peers_without_handshake gauge
flannel_wireguard_peers_without_handshake{device="flannel-wg"} 1
# HELP flannel_wireguard_device_info Always 1 per WireGuard device of ours; implementation is kernel or userspace (wireguard-go inside flanneld).
# TYPE flannel_wireguard_device_info gauge
flannel_wireguard_device_info{device="flannel-wg",implementation="userspace"} 1
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want),
		"flannel_wireguard_handshake_age_seconds", "flannel_wireguard_peers", "flannel_wireguard_peers_without_handshake", "flannel_wireguard_device_info"); err != nil {
		t.Error(err)
	}
}
